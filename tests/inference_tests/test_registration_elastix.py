"""The elastix backend (skipped when the elastix binary is absent; CI installs it)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from inference.registration import jacobian_determinant, register, summarize_jacobian
from inference.registration.elastix import (
    DEFAULT_PARAMS,
    bspline_parameters,
    format_parameter_file,
)
from inference.registration.synthetic import make_synthetic_pair

OBLIQUE = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
SPACING_MM = 3.0
FAST = {
    "final_grid_spacing_mm": 6.0,
    "affine_iterations": 100,
    "bspline_iterations": 200,
    "spatial_samples": 2000,
    "threads": 2,
}
TORCH_FAST = {"iterations": [60, 40], "affine_iterations": [80], "threads": 1}

requires_elastix = pytest.mark.skipif(
    shutil.which("elastix") is None or shutil.which("transformix") is None,
    reason="elastix/transformix not installed (apt-get install elastix)",
)


@pytest.fixture(scope="module")
def pair():
    return make_synthetic_pair(
        seed=0,
        shape_kji=(32, 40, 40),
        spacing_mm=(SPACING_MM,) * 3,
        direction=OBLIQUE,
        shrink_strength=0.1,
    )


@pytest.fixture(scope="module")
def result(pair):
    return register(
        pair.baseline,
        pair.followup,
        fixed_mask=pair.baseline_mask,
        backend="elastix",
        params=FAST,
    )


def test_parameter_file_is_elastix_syntax_and_cites_par0011():
    text = format_parameter_file(bspline_parameters(3, DEFAULT_PARAMS), "based on Par0011")

    assert text.startswith("// based on Par0011")
    assert '(Metric "AdvancedNormalizedCorrelation" "TransformBendingEnergyPenalty")' in text
    assert "(FinalGridSpacingInPhysicalUnits 10.0 10.0 10.0)" in text
    assert '(UseDirectionCosines "true")' in text
    assert "(ImagePyramidSchedule 4 4 4 2 2 2 1 1 1)" in text


@pytest.mark.external
@requires_elastix
def test_elastix_recovers_known_deformation_within_a_voxel(pair, result):
    inside = pair.baseline_mask.array > 0
    error_mm = np.linalg.norm(result.displacement - pair.displacement_lps_mm, axis=-1)[inside]

    assert error_mm.mean() < SPACING_MM


@pytest.mark.external
@requires_elastix
def test_elastix_log_jacobian_shows_the_shrinking_region(pair, result):
    logjac, summary = summarize_jacobian(result.displacement, pair.baseline, pair.baseline_mask)
    truth = pair.log_jacobian.array[pair.shrink_region].mean()
    estimate = logjac[pair.shrink_region].mean()

    assert estimate < 0
    assert abs(estimate - truth) < 0.6 * abs(truth)
    assert summary.folding_fraction < 0.001
    assert result.version.startswith("elastix")
    assert "Par0011" in result.params["parameter_source"]


@pytest.mark.external
@requires_elastix
def test_our_jacobian_matches_transformix_on_an_oblique_grid(pair, result):
    """Same determinant as elastix's own (analytic B-spline) one: direction handled alike."""
    ours = jacobian_determinant(
        result.displacement, pair.baseline.spacing_mm, direction=pair.baseline.direction
    )
    theirs = result.backend_jacobian_determinant
    inside = pair.baseline_mask.array > 0

    ignoring_direction = jacobian_determinant(result.displacement, pair.baseline.spacing_mm)

    assert theirs is not None
    # Central differences vs analytic B-spline derivatives: close, not identical.
    gap = np.abs(ours - theirs)[inside].mean()
    assert gap < 0.03
    assert abs(ours[inside].mean() - theirs[inside].mean()) < 0.005
    assert np.abs(ignoring_direction - theirs)[inside].mean() > 2 * gap
    assert np.abs(theirs[inside] - 1.0).max() > 0.05  # not a trivial identity comparison


@pytest.mark.external
@requires_elastix
def test_torch_and_elastix_return_the_same_convention(pair, result):
    torch_result = register(
        pair.baseline,
        pair.followup,
        fixed_mask=pair.baseline_mask,
        moving_mask=pair.followup_mask,
        backend="torch",
        params=TORCH_FAST,
    )
    inside = pair.baseline_mask.array > 0
    gap_mm = np.linalg.norm(torch_result.displacement - result.displacement, axis=-1)[inside]

    assert gap_mm.mean() < SPACING_MM
    assert np.linalg.norm(pair.displacement_lps_mm, axis=-1)[inside].mean() > 4.0
