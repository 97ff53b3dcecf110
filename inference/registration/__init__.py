"""Deformable registration of chest CT, and the Jacobian maps derived from it.

Public interface::

    result = register(fixed, moving, fixed_mask=..., moving_mask=..., backend="torch")
    result.displacement            # [k, j, i, 3] float32, LPS mm, on the fixed grid
    result.warp(moving_labels, interpolation="nearest")   # moving-space volume on fixed grid

Convention (every backend, every function): fixed point ``x`` (LPS mm) corresponds to moving
point ``x + u(x)``. For the longitudinal engine fixed = baseline and moving = follow-up, so
``log det(I + grad u) < 0`` is shrinkage from baseline to follow-up.

Backends: ``"torch"`` (ours: SVF + LNCC instance optimisation, CPU/CUDA) and ``"elastix"`` (the
reference: elastix/transformix binaries with a Par0011-based lung parameter set). Add one with
:func:`register_backend`.
"""

from __future__ import annotations

from inference.registration.base import (
    BackendOutput,
    BackendUnavailableError,
    RegistrationBackend,
    RegistrationError,
    RegistrationResult,
    available_backends,
    get_backend,
    register,
    register_backend,
)
from inference.registration.elastix import ElastixBackend
from inference.registration.fieldio import VECTOR_FRAME, read_displacement, write_displacement
from inference.registration.fields import (
    affine_displacement,
    compose,
    invert_displacement,
    sample_displacement,
    warp_volume,
)
from inference.registration.jacobian import (
    DEFAULT_EPSILON,
    JacobianSummary,
    clipped_fraction,
    folding_fraction,
    jacobian_determinant,
    log_jacobian,
    lung_regions,
    regional_means,
    summarize_jacobian,
)
from inference.registration.resample import crop_to_mask, resample_isotropic, resample_to_grid
from inference.registration.torch_backend import TorchBackend

register_backend("torch", TorchBackend, replace=True)
register_backend("elastix", ElastixBackend, replace=True)

__all__ = [
    "DEFAULT_EPSILON",
    "VECTOR_FRAME",
    "BackendOutput",
    "BackendUnavailableError",
    "ElastixBackend",
    "JacobianSummary",
    "RegistrationBackend",
    "RegistrationError",
    "RegistrationResult",
    "TorchBackend",
    "affine_displacement",
    "available_backends",
    "clipped_fraction",
    "compose",
    "crop_to_mask",
    "folding_fraction",
    "get_backend",
    "invert_displacement",
    "jacobian_determinant",
    "log_jacobian",
    "lung_regions",
    "read_displacement",
    "regional_means",
    "register",
    "register_backend",
    "resample_isotropic",
    "resample_to_grid",
    "sample_displacement",
    "summarize_jacobian",
    "warp_volume",
    "write_displacement",
]
