"""python -m inference.register on files: outputs, conventions, summary.json."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from inference.imageio import read_image, write_image
from inference.register import main
from inference.registration.fieldio import read_displacement
from inference.registration.synthetic import make_synthetic_pair

FAST = json.dumps({"iterations": [40, 30], "affine_iterations": [60], "threads": 1})


@pytest.fixture(scope="module")
def pair():
    return make_synthetic_pair(
        seed=5, shape_kji=(28, 36, 36), spacing_mm=(3.0, 3.0, 3.0), shrink_strength=0.1
    )


@pytest.fixture
def files(pair, tmp_path):
    paths = {
        "fixed": tmp_path / "baseline.nii.gz",
        "moving": tmp_path / "followup.nii.gz",
        "fixed_mask": tmp_path / "baseline_lungs.nii.gz",
        "moving_mask": tmp_path / "followup_lungs.nii.gz",
    }
    write_image(pair.baseline, paths["fixed"])
    write_image(pair.followup, paths["moving"])
    write_image(pair.baseline_mask, paths["fixed_mask"])
    write_image(pair.followup_mask, paths["moving_mask"])
    return paths


def test_it_writes_every_output_on_the_baseline_grid(pair, files, tmp_path):
    out = tmp_path / "out"

    code = main(
        [
            "--fixed", str(files["fixed"]),
            "--moving", str(files["moving"]),
            "--fixed-mask", str(files["fixed_mask"]),
            "--moving-mask", str(files["moving_mask"]),
            "--output-dir", str(out),
            "--spacing-mm", "3.0",
            "--params", FAST,
        ]
    )  # fmt: skip

    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    displacement, grid = read_displacement(out / "displacement.nii.gz")
    logjac = read_image(out / "log_jacobian.nii.gz")
    warped = read_image(out / "warped_followup.nii.gz")
    mask = read_image(out / "lung_mask.nii.gz")
    inside = pair.baseline_mask.array > 0

    assert grid.same_grid(pair.baseline) and logjac.same_grid(pair.baseline)
    assert warped.same_grid(pair.baseline) and mask.same_grid(pair.baseline)
    error_mm = np.linalg.norm(displacement - pair.displacement_lps_mm, axis=-1)[inside]
    assert error_mm.mean() < 1.5
    assert summary["vector_frame"] == "LPS"
    assert summary["backend"] == "torch" and "torch" in summary["version"]
    assert summary["parameters"]["iterations"] == [40, 30]
    assert summary["inputs"]["fixed_mask"] == str(files["fixed_mask"])
    assert summary["folding_fraction"] < 0.001
    assert summary["clipped_fraction"] < 0.001
    assert summary["mean_log_jacobian"] == pytest.approx(logjac.array[inside].mean(), abs=1e-4)
    assert {"superior", "inferior", "anterior", "posterior", "inferior_posterior"} <= set(
        summary["regional_mean_log_jacobian"]
    )
    assert {"read", "resample", "register", "jacobian", "write"} <= set(summary["timings_s"])


def test_it_segments_the_lungs_when_no_mask_is_given(pair, files, tmp_path, monkeypatch):
    import inference.segmentation.classical as classical

    calls = []

    def fake_lung_mask(ct):
        calls.append(ct.shape_kji)
        return pair.baseline_mask if ct.same_grid(pair.baseline) else pair.followup_mask

    monkeypatch.setattr(classical, "lung_mask", fake_lung_mask)
    out = tmp_path / "out"

    code = main(
        [
            "--fixed", str(files["fixed"]),
            "--moving", str(files["moving"]),
            "--output-dir", str(out),
            "--spacing-mm", "3.0",
            "--params", FAST,
        ]
    )  # fmt: skip

    summary = json.loads((out / "summary.json").read_text())
    assert code == 0
    assert len(calls) == 2
    assert summary["inputs"]["fixed_mask"] == "inference.segmentation.classical.lung_mask"


def test_it_fails_readably_on_a_missing_file(tmp_path, capsys):
    code = main(
        ["--fixed", str(tmp_path / "no.nii.gz"), "--moving", str(tmp_path / "no.nii.gz"),
         "--output-dir", str(tmp_path / "out")]
    )  # fmt: skip

    assert code == 1
    assert "does not exist" in capsys.readouterr().err


def test_it_runs_as_a_module():
    completed = subprocess.run(
        [sys.executable, "-m", "inference.register", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0
    assert "--spacing-mm" in completed.stdout
