"""Engine registry, result type and pipeline (stages, timings, geometry checks)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from inference.segmentation import engines
from inference.segmentation.engines import (
    EngineUnavailable,
    SegmentationResult,
    available_engines,
    get_engine,
    register_engine,
)
from inference.segmentation.pipeline import SegmentationPipeline, run_segmentation
from inference.volume import GeometryError, Volume


def _labels() -> Volume:
    array = np.zeros((3, 4, 5), np.uint8)
    array[1, :2, :2] = 1  # 4 lung voxels
    array[1, 0, 0] = 2  # 1 of them ILD
    array[2, 3, 4] = 1
    return Volume(array, (2.0, 2.0, 5.0), (0.0, 0.0, -10.0))


class FakeEngine:
    """Returns a fixed label map on the CT's grid (or a wrong one, to test the checks)."""

    name = "fake"
    version = "9.9"

    def __init__(self, labels: np.ndarray, *, wrong_grid: bool = False) -> None:
        self.labels = labels
        self.wrong_grid = wrong_grid

    def predict(self, ct: Volume) -> SegmentationResult:
        label_map = (
            Volume(self.labels, (9.0, 9.0, 9.0)) if self.wrong_grid else ct.with_array(self.labels)
        )
        return SegmentationResult.from_label_map(
            label_map, engine=self.name, version=self.version, timings_s={"think": 0.5}
        )


def test_result_volumes_extent_and_per_slice() -> None:
    result = SegmentationResult.from_label_map(_labels(), engine="e", version="1")
    voxel_ml = 2.0 * 2.0 * 5.0 / 1000.0
    assert result.lung_ml == pytest.approx(5 * voxel_ml)
    assert result.ild_ml == pytest.approx(1 * voxel_ml)
    assert result.extent_pct == pytest.approx(20.0)
    assert [s.index_k for s in result.per_slice] == [1, 2]
    assert result.per_slice[0].z_mm == pytest.approx(-5.0)  # origin z -10 + 1 * 5 mm
    assert result.per_slice[0].lung_ml == pytest.approx(4 * voxel_ml)
    assert result.per_slice[0].ild_ml == pytest.approx(voxel_ml)
    summary = result.summary()
    assert summary["extent_pct"] == pytest.approx(20.0)
    assert summary["engine"] == "e"


def test_result_refuses_labels_other_than_0_1_2() -> None:
    bad = _labels().with_array(np.full((3, 4, 5), 3, np.uint8))
    with pytest.raises(ValueError, match="0, 1 or 2"):
        SegmentationResult.from_label_map(bad, engine="e", version="1")


def test_no_lung_gives_zero_extent() -> None:
    empty = _labels().with_array(np.zeros((3, 4, 5), np.uint8))
    result = SegmentationResult.from_label_map(empty, engine="e", version="1")
    assert result.extent_pct == 0.0
    assert result.per_slice == ()


def test_classical_engine_is_registered() -> None:
    engine = get_engine("classical", weights=None, device="cpu")
    assert engine.name == "classical"
    assert engine.version
    assert "classical" in available_engines()


@pytest.mark.parametrize("name", ["atlasnet", "unet"])
def test_reserved_network_names_say_they_are_unavailable(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(engines.ENGINE_MODULES, name, ("inference.no_such_module_for_tests",))
    monkeypatch.delitem(engines._REGISTRY, name, raising=False)
    assert name in available_engines()
    with pytest.raises(EngineUnavailable, match="reserved"):
        get_engine(name, weights=Path("/nowhere"), device="cpu")


def test_unknown_engine_and_bad_device() -> None:
    with pytest.raises(EngineUnavailable, match="unknown engine"):
        get_engine("magic")
    with pytest.raises(ValueError, match="device"):
        get_engine("classical", device="tpu")


def test_register_engine_makes_a_name_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "_REGISTRY", dict(engines._REGISTRY))
    labels = _labels().array

    def factory(*, weights: Path | None, device: str) -> FakeEngine:
        return FakeEngine(labels)

    register_engine("fake", factory)
    assert get_engine("fake").name == "fake"
    with pytest.raises(ValueError, match="already registered"):
        register_engine("fake", factory)


def test_pipeline_times_every_stage_and_keeps_the_grid() -> None:
    labels = _labels()
    ct = labels.with_array(np.full(labels.shape_kji, -1000.0, np.float32))
    result = SegmentationPipeline(FakeEngine(labels.array))(ct)
    assert {"preprocess", "infer", "infer/think", "postprocess", "total"} <= set(result.timings_s)
    assert "write" not in result.timings_s
    assert result.label_map.same_grid(ct)
    assert result.engine == "fake"
    assert result.version == "9.9"
    assert result.extent_pct == pytest.approx(20.0)


def test_pipeline_refuses_a_label_map_on_another_grid() -> None:
    labels = _labels()
    ct = labels.with_array(np.zeros(labels.shape_kji, np.int16))
    with pytest.raises(GeometryError, match="another grid"):
        SegmentationPipeline(FakeEngine(labels.array, wrong_grid=True))(ct)


def test_preprocess_clips_to_the_hu_range() -> None:
    pipeline = SegmentationPipeline(FakeEngine(np.zeros((1, 1, 2), np.uint8)))
    ct = Volume(np.array([[[-3024.0, 5000.4]]], np.float32))
    prepared = pipeline.preprocess(ct)
    assert prepared.array.dtype == np.int16
    assert prepared.array.tolist() == [[[-1024, 3071]]]


def test_run_segmentation_writes_the_label_map(tmp_path: Path) -> None:
    imageio = pytest.importorskip("inference.imageio")
    labels = _labels()
    ct = labels.with_array(np.zeros(labels.shape_kji, np.int16))
    output = tmp_path / "out" / "labels.nii.gz"
    result = run_segmentation(ct, engine=FakeEngine(labels.array), output=output)
    assert "write" in result.timings_s
    written = imageio.read_image(output)
    assert written.same_grid(labels)
    assert np.array_equal(written.array, labels.array)


def test_a_provider_module_registers_a_reserved_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fake_atlasnet_provider.py").write_text(
        "from inference.segmentation.engines import register_engine\n"
        "from inference.segmentation.classical import ClassicalEngine\n"
        "class Net(ClassicalEngine):\n"
        "    name = 'atlasnet'\n"
        "register_engine('atlasnet', lambda *, weights, device: Net())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(engines, "_REGISTRY", dict(engines._REGISTRY))
    engines._REGISTRY.pop("atlasnet", None)
    monkeypatch.setitem(
        engines.ENGINE_MODULES, "atlasnet", ("inference.not_there", "fake_atlasnet_provider")
    )
    try:
        assert get_engine("atlasnet", weights=tmp_path, device="cpu").name == "atlasnet"
    finally:
        sys.modules.pop("fake_atlasnet_provider", None)
