"""``python -m inference.segment``: reads a file, writes the label map, prints the JSON summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference import segment
from inference.phantoms import make_phantom

imageio = pytest.importorskip("inference.imageio")


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    phantom = make_phantom(seed=5, shape_kji=(32, 64, 64), extent_pct=20.0)
    path = tmp_path_factory.mktemp("cli") / "ct.nrrd"
    imageio.write_image(phantom.ct, path)
    return path


def test_it_writes_the_label_map_in_the_input_geometry(
    ct_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "labels.nii.gz"
    assert segment.main([str(ct_file), "--engine", "classical", "--output", str(output)]) == 0
    summary = json.loads(capsys.readouterr().out)
    ct = imageio.read_image(ct_file)
    labels = imageio.read_image(output)
    assert labels.same_grid(ct)
    assert set(np.unique(labels.array)) <= {0, 1, 2}
    voxel_ml = ct.voxel_volume_ml
    assert summary["lung_ml"] == pytest.approx(np.count_nonzero(labels.array) * voxel_ml, rel=1e-3)
    assert summary["ild_ml"] == pytest.approx(
        np.count_nonzero(labels.array == 2) * voxel_ml, rel=1e-3, abs=1e-3
    )
    assert summary["engine"] == "classical"
    assert summary["version"]
    assert {"read", "preprocess", "infer", "postprocess", "write", "total"} <= set(
        summary["timings_s"]
    )
    assert summary["per_slice"]
    assert {"index_k", "z_mm", "lung_ml", "ild_ml"} == set(summary["per_slice"][0])
    assert 0.0 <= summary["extent_pct"] <= 100.0


def test_an_unavailable_engine_exits_3(
    ct_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from inference.segmentation import engines

    monkeypatch.setitem(engines.ENGINE_MODULES, "unet", ("inference.no_such_module_for_tests",))
    monkeypatch.delitem(engines._REGISTRY, "unet", raising=False)
    status = segment.main([str(ct_file), "--engine", "unet", "-o", str(tmp_path / "x.nii.gz")])
    assert status == segment.EXIT_ENGINE
    assert "unet" in capsys.readouterr().err


def test_a_missing_input_exits_4(tmp_path: Path) -> None:
    status = segment.main([str(tmp_path / "nothing.nrrd"), "-o", str(tmp_path / "x.nii.gz")])
    assert status == segment.EXIT_INPUT


def test_an_unwritable_output_exits_5(ct_file: Path, tmp_path: Path) -> None:
    status = segment.main([str(ct_file), "-o", str(tmp_path / "labels.unknown")])
    assert status == segment.EXIT_OUTPUT
