"""The registration interface: one ``register`` call, pluggable backends, one result type.

Both the longitudinal engine (follow-up CT onto baseline CT) and the segmentation engine (case
onto templates, predictions mapped back) call :func:`register`. A backend is any object with a
``name``, a ``version()`` and a ``register(...)`` returning :class:`BackendOutput`; backends are
looked up by name in a registry so that a third one can be added with :func:`register_backend`.

Displacement convention (see :mod:`inference.registration.fields`): a ``[k, j, i, 3]`` float32
field of LPS mm vectors on the *fixed* grid; fixed point ``x`` corresponds to moving point
``x + u(x)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from inference.registration.fields import Interpolation, check_displacement, warp_volume
from inference.volume import GeometryError, Volume


class RegistrationError(RuntimeError):
    """A registration backend failed (the message says which and why)."""


class BackendUnavailableError(RegistrationError):
    """The requested backend is not installed here (e.g. no ``elastix`` binary on PATH)."""


@dataclass(frozen=True)
class BackendOutput:
    """What a backend hands back to :func:`register`.

    Attributes:
        displacement: ``[k, j, i, 3]`` float32 LPS mm field on the fixed grid.
        params: the parameters actually used (defaults merged with the caller's).
        timings_s: seconds per stage.
        affine_lps: the 4x4 LPS mm affine pre-alignment (fixed point -> moving point) when the
            backend knows it, else ``None``.
        jacobian_determinant: ``[k, j, i]`` determinant computed by the backend itself
            (elastix's transformix ``-jac``), when available; used for cross-checks only.
    """

    displacement: npt.NDArray[np.float32]
    params: dict[str, Any]
    timings_s: dict[str, float]
    affine_lps: npt.NDArray[np.float64] | None = None
    jacobian_determinant: npt.NDArray[np.float32] | None = None


class RegistrationBackend(Protocol):
    """What a backend provides. Implementations must not keep state between calls."""

    name: str

    def version(self) -> str:
        """Engine name and version, recorded with every output."""
        ...

    def available(self) -> bool:
        """Whether this backend can run here (binaries found, libraries importable)."""
        ...

    def register(
        self,
        fixed: Volume,
        moving: Volume,
        *,
        fixed_mask: Volume | None,
        moving_mask: Volume | None,
        params: Mapping[str, Any],
    ) -> BackendOutput:
        """Register ``moving`` onto ``fixed``; the field lies on the fixed grid."""
        ...


@dataclass(frozen=True, eq=False)
class RegistrationResult:
    """A registration's field plus what produced it.

    Attributes:
        displacement: ``[k, j, i, 3]`` float32 LPS mm field on ``fixed_grid``; fixed point ``x``
            corresponds to moving point ``x + u(x)``.
        fixed_grid: the fixed image (its geometry defines the field's lattice).
        backend: backend name (``"torch"``, ``"elastix"``, ...).
        version: backend engine and version string.
        params: parameters actually used.
        timings_s: seconds per stage, including ``"total"``.
        affine_lps: 4x4 affine pre-alignment (fixed -> moving, LPS mm) when known.
        backend_jacobian_determinant: determinant computed by the backend itself, if any.
    """

    displacement: npt.NDArray[np.float32]
    fixed_grid: Volume
    backend: str
    version: str
    params: dict[str, Any]
    timings_s: dict[str, float]
    affine_lps: npt.NDArray[np.float64] | None = None
    backend_jacobian_determinant: npt.NDArray[np.float32] | None = None

    def warp(
        self,
        volume: Volume,
        *,
        interpolation: Interpolation = "linear",
        default_value: float | None = None,
    ) -> Volume:
        """Resample a moving-space ``volume`` (image or label map) onto the fixed grid.

        ``interpolation="nearest"`` keeps the dtype (label maps); ``"linear"`` returns float32.
        ``default_value`` fills points outside the volume (``None``: the volume's minimum).
        """
        return warp_volume(
            volume,
            self.displacement,
            self.fixed_grid,
            interpolation,
            default_value=default_value,
        )


BackendFactory = Callable[[], RegistrationBackend]

_REGISTRY: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory, *, replace: bool = False) -> None:
    """Make a backend available to :func:`register` under ``name``.

    Raises:
        ValueError: if ``name`` is taken and ``replace`` is false.
    """
    if name in _REGISTRY and not replace:
        raise ValueError(f"registration backend {name!r} is already registered")
    _REGISTRY[name] = factory


def available_backends() -> dict[str, bool]:
    """Every registered backend name and whether it can run here."""
    return {name: factory().available() for name, factory in sorted(_REGISTRY.items())}


def get_backend(name: str) -> RegistrationBackend:
    """The backend registered as ``name``.

    Raises:
        ValueError: if no backend has that name.
        BackendUnavailableError: if it is registered but cannot run here.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown registration backend {name!r}; known: {sorted(_REGISTRY)}")
    backend = _REGISTRY[name]()
    if not backend.available():
        raise BackendUnavailableError(f"registration backend {name!r} is not available here")
    return backend


def _check_mask(mask: Volume | None, image: Volume, role: str) -> None:
    if mask is not None and not mask.same_grid(image):
        raise GeometryError(f"{role}_mask must lie on the {role} image's grid")
    if mask is not None and not np.any(mask.array):
        raise ValueError(f"{role}_mask is empty")


def register(
    fixed: Volume,
    moving: Volume,
    *,
    fixed_mask: Volume | None = None,
    moving_mask: Volume | None = None,
    backend: str = "torch",
    params: Mapping[str, Any] | None = None,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` (affine then deformable).

    Args:
        fixed: reference image (e.g. baseline CT, or a template). The result lives on its grid.
        moving: image to align (e.g. follow-up CT, or a case). Any grid and direction.
        fixed_mask: region of interest on the fixed grid (non-zero = in; lung labels 1/2 are
            fine). The similarity is restricted to (a dilation of) it.
        moving_mask: same for the moving grid; backends may use it for initialisation.
        backend: registry name, ``"torch"`` (default) or ``"elastix"``.
        params: backend parameters overriding its defaults (see each backend's
            ``DEFAULT_PARAMS``); the merged set is recorded in the result.

    Returns:
        A :class:`RegistrationResult` whose ``displacement`` is ``[k, j, i, 3]`` LPS mm on the
        fixed grid, with fixed point ``x`` corresponding to moving point ``x + u(x)``.

    Raises:
        ValueError: unknown backend, empty mask, unknown parameter.
        GeometryError: a mask not on its image's grid.
        BackendUnavailableError: the backend cannot run here.
        RegistrationError: the backend failed.
    """
    _check_mask(fixed_mask, fixed, "fixed")
    _check_mask(moving_mask, moving, "moving")
    engine = get_backend(backend)
    start = time.perf_counter()
    output = engine.register(
        fixed,
        moving,
        fixed_mask=fixed_mask,
        moving_mask=moving_mask,
        params=dict(params or {}),
    )
    check_displacement(output.displacement, fixed)
    timings = dict(output.timings_s)
    timings["total"] = time.perf_counter() - start
    return RegistrationResult(
        displacement=output.displacement,
        fixed_grid=fixed,
        backend=backend,
        version=engine.version(),
        params=output.params,
        timings_s=timings,
        affine_lps=output.affine_lps,
        backend_jacobian_determinant=output.jacobian_determinant,
    )


def merge_params(
    defaults: Mapping[str, Any], overrides: Mapping[str, Any], *, backend: str
) -> dict[str, Any]:
    """Defaults updated with ``overrides``.

    Raises:
        ValueError: if an override names a parameter the backend does not know (a typo
            would otherwise be silently ignored).
    """
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {backend} registration parameters: {unknown}")
    merged = dict(defaults)
    merged.update(overrides)
    return merged


__all__ = [
    "BackendOutput",
    "BackendUnavailableError",
    "RegistrationBackend",
    "RegistrationError",
    "RegistrationResult",
    "available_backends",
    "get_backend",
    "merge_params",
    "register",
    "register_backend",
]
