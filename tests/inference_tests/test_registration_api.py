"""The register() interface: backend registry, argument checks, errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from inference.registration import (
    BackendOutput,
    BackendUnavailableError,
    available_backends,
    get_backend,
    register,
)
from inference.registration import base as registration_base
from inference.registration.synthetic import make_synthetic_ct
from inference.volume import GeometryError, Volume


class ShiftBackend:
    """A third backend: answers a constant 2 mm posterior shift."""

    name = "shift"

    def version(self) -> str:
        return "shift 0.1"

    def available(self) -> bool:
        return True

    def register(
        self,
        fixed: Volume,
        moving: Volume,
        *,
        fixed_mask: Volume | None,
        moving_mask: Volume | None,
        params: Mapping[str, Any],
    ) -> BackendOutput:
        u = np.zeros((*fixed.shape_kji, 3), dtype=np.float32)
        u[..., 1] = params.get("shift_mm", 2.0)
        return BackendOutput(displacement=u, params=dict(params), timings_s={"shift": 0.0})


@pytest.fixture
def ct():
    return make_synthetic_ct(seed=3, shape_kji=(12, 16, 16), spacing_mm=(4.0, 4.0, 4.0))


def test_a_third_backend_plugs_into_register(monkeypatch, ct):
    image, mask = ct
    monkeypatch.setitem(registration_base._REGISTRY, "shift", ShiftBackend)

    result = register(image, image, fixed_mask=mask, backend="shift", params={"shift_mm": 3.0})

    assert available_backends()["shift"] is True
    assert result.backend == "shift"
    assert result.version == "shift 0.1"
    assert result.params == {"shift_mm": 3.0}
    assert set(result.timings_s) == {"shift", "total"}
    np.testing.assert_allclose(result.displacement[..., 1], 3.0)


def test_registering_a_taken_name_needs_replace():
    with pytest.raises(ValueError, match="already registered"):
        registration_base.register_backend("torch", ShiftBackend)


def test_unknown_backend_is_refused(ct):
    image, _ = ct
    with pytest.raises(ValueError, match="unknown registration backend"):
        register(image, image, backend="nope")


def test_unknown_parameter_is_refused_not_ignored(ct):
    image, _ = ct
    with pytest.raises(ValueError, match="iteratoins"):
        register(image, image, backend="torch", params={"iteratoins": [1]})


def test_mask_on_another_grid_is_refused(ct):
    image, mask = ct
    other = Volume(mask.array, (1.0, 1.0, 1.0))
    with pytest.raises(GeometryError, match="fixed_mask"):
        register(image, image, fixed_mask=other, backend="torch")


def test_empty_mask_is_refused(ct):
    image, mask = ct
    with pytest.raises(ValueError, match="empty"):
        register(image, image, fixed_mask=mask.with_array(np.zeros_like(mask.array)))


def test_elastix_without_binary_is_unavailable(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BackendUnavailableError, match="elastix"):
        get_backend("elastix")


def test_identical_images_give_a_near_zero_field(ct):
    image, mask = ct
    result = register(
        image,
        image,
        fixed_mask=mask,
        moving_mask=mask,
        backend="torch",
        params={"iterations": [20, 20], "affine_iterations": [20], "threads": 1},
    )
    assert np.abs(result.displacement[mask.array > 0]).max() < 0.5


def test_identical_images_with_the_mask_term_give_a_near_zero_field(ct):
    image, mask = ct
    result = register(
        image,
        image,
        fixed_mask=mask,
        moving_mask=mask,
        backend="torch",
        params={
            "iterations": [20, 20],
            "affine_iterations": [20],
            "threads": 1,
            "mask_weight": 2.0,
        },
    )
    assert result.params["mask_weight"] == 2.0
    assert np.abs(result.displacement[mask.array > 0]).max() < 0.5
