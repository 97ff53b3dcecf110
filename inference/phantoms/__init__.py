"""Synthetic chest CT phantoms with SSc-ILD and exact ground truth (no Django).

Public API (keyword-only arguments; arrays ``[k, j, i]``, geometry in LPS mm):

* ``make_phantom(seed=, shape_kji=, spacing_mm=, extent_pct=) -> Phantom``
* ``make_longitudinal_pair(seed=, ..., progression=) -> PhantomPair``
* ``write_cohort(out_dir, patients=, seed=, shape_kji=, spacing_mm=, followup=) -> Path``

Command line: ``python -m inference.phantoms --out DIR --patients N --seed S``.
"""

from __future__ import annotations

from inference.phantoms.cohort import write_cohort
from inference.phantoms.generator import (
    DEFAULT_SHAPE_KJI,
    PHANTOM_VERSION,
    Phantom,
    PhantomPair,
    baseline_pft,
    make_longitudinal_pair,
    make_phantom,
)

__all__ = [
    "DEFAULT_SHAPE_KJI",
    "PHANTOM_VERSION",
    "Phantom",
    "PhantomPair",
    "baseline_pft",
    "make_longitudinal_pair",
    "make_phantom",
    "write_cohort",
]
