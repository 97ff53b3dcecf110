"""Small helpers shared by the statistics modules (not public API)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# Dash used between the bounds of a range, as in the papers' tables ("0.63–0.77").
EN_DASH = "\u2013"


def finite_or_none(value: float) -> float | None:
    """``value`` as a plain float, or ``None`` when it is NaN or infinite (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def jsonable(value: Any) -> Any:
    """Recursively turn numpy scalars/arrays and non-finite floats into JSON-safe values."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return [jsonable(item) for item in value.tolist()]
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [jsonable(item) for item in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return finite_or_none(float(value))
    return value


def as_float_1d(values: npt.ArrayLike, name: str = "values") -> FloatArray:
    """``values`` as a 1-D float64 array (NaN kept).

    Raises:
        ValueError: if ``values`` is not one-dimensional (a scalar counts as length 1).
    """
    array = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def format_number(value: float, decimals: int) -> str:
    """``value`` rounded half up to ``decimals`` places; ``"NA"`` for NaN; no ``-0``.

    Half-up, as tables in medical journals round (33 of 40 = 82.5 % prints as 83 %), after first
    rounding to 10 decimals so that binary noise (``0.825 * 100 == 82.49999999999999``) does
    not decide the last digit.
    """
    if not math.isfinite(value):
        return "NA"
    exact = Decimal(repr(round(float(value), 10)))
    text = str(exact.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))
    # "-0.00" reads as a sign error in a table; a rounded zero has no sign.
    if float(text) == 0.0:
        text = text.lstrip("-")
    return text
