"""The torch backend against known deformations, on a small oblique synthetic chest CT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.registration import register, summarize_jacobian
from inference.registration.synthetic import make_synthetic_ct, make_synthetic_pair
from inference.volume import Volume

# i -> patient right (-x), j -> superior (+z), k -> anterior (-y): any axis mix-up shows.
OBLIQUE = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
SPACING_MM = 3.0
# Small and single-threaded: the CI machine is shared, and tiny tensors gain nothing from threads.
FAST = {"iterations": [60, 40], "affine_iterations": [80], "threads": 1}


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
        moving_mask=pair.followup_mask,
        backend="torch",
        params=FAST,
    )


def shifted(volume: Volume, shift_lps_mm) -> Volume:
    """The same voxels moved by ``shift`` in LPS: content at x now sits at x + shift."""
    origin = np.asarray(volume.origin_lps_mm) + np.asarray(shift_lps_mm)
    return Volume(volume.array, volume.spacing_mm, tuple(origin), volume.direction)


@pytest.mark.parametrize(
    ("axis", "name"), [(0, "L"), (1, "P"), (2, "S")], ids=["left", "posterior", "superior"]
)
def test_known_translation_comes_back_in_the_right_lps_axis(axis, name):
    ct, mask = make_synthetic_ct(
        seed=1, shape_kji=(32, 36, 36), spacing_mm=(SPACING_MM,) * 3, direction=OBLIQUE
    )
    shift = np.zeros(3)
    shift[axis] = 7.0

    result = register(
        ct,
        shifted(ct, shift),
        fixed_mask=mask,
        moving_mask=shifted(mask, shift),
        backend="torch",
        params={**FAST, "deformable": False},
    )

    inside = mask.array > 0
    recovered = result.displacement[inside].mean(axis=0)
    np.testing.assert_allclose(recovered, shift, atol=0.3, err_msg=f"7 mm along {name}")


def test_recovers_known_deformation_within_a_voxel(pair, result):
    inside = pair.baseline_mask.array > 0
    error_mm = np.linalg.norm(result.displacement - pair.displacement_lps_mm, axis=-1)[inside]
    true_mm = np.linalg.norm(pair.displacement_lps_mm, axis=-1)[inside]

    assert error_mm.mean() < 1.0  # a third of a voxel
    assert true_mm.mean() > 4.0  # ...of a deformation several times larger


def test_log_jacobian_shows_the_shrinking_region(pair, result):
    logjac, summary = summarize_jacobian(result.displacement, pair.baseline, pair.baseline_mask)
    truth = pair.log_jacobian.array[pair.shrink_region].mean()
    estimate = logjac[pair.shrink_region].mean()

    assert truth < -0.1
    assert estimate < 0
    # 3 mm voxels and a 19 mm bump: the regulariser under-reads by about a third here.
    assert abs(estimate - truth) < 0.5 * abs(truth)
    assert summary.folding_fraction < 0.001


def test_warped_followup_mask_overlaps_baseline_mask(pair, result):
    warped = result.warp(pair.followup_mask, interpolation="nearest")
    a, b = warped.array > 0, pair.baseline_mask.array > 0
    unregistered = pair.followup_mask.array > 0

    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    dice_before = 2 * (unregistered & b).sum() / (unregistered.sum() + b.sum())

    assert warped.array.dtype == np.uint8
    assert dice > 0.95
    assert dice > dice_before + 0.03


def test_result_records_backend_version_params_and_timings(result):
    assert result.backend == "torch"
    assert "torch" in result.version
    assert result.params["iterations"] == [60, 40]
    assert result.params["device_used"] == "cpu"
    assert {"affine", "deformable", "total"} <= set(result.timings_s)
    assert result.affine_lps is not None and result.affine_lps.shape == (4, 4)


def test_thread_setting_does_not_leak(pair):
    before = torch.get_num_threads()
    register(
        pair.baseline,
        pair.followup,
        backend="torch",
        params={"threads": 1, "affine": False, "iterations": [2, 2]},
    )
    assert torch.get_num_threads() == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_answer(pair, result):
    on_gpu = register(
        pair.baseline,
        pair.followup,
        fixed_mask=pair.baseline_mask,
        moving_mask=pair.followup_mask,
        backend="torch",
        params={**FAST, "device": "cuda"},
    )
    inside = pair.baseline_mask.array > 0
    difference = np.linalg.norm(on_gpu.displacement - result.displacement, axis=-1)[inside]
    assert on_gpu.params["device_used"].startswith("cuda")
    assert difference.mean() < 0.2
