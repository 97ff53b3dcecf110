"""The network engines: template registration both ways, majority vote, weights folders, CLI.

The engine mechanics are tested with fixed "networks" (HU thresholds written as ``nn.Module``s),
so the checks do not depend on training: what goes through the registration to the template and
back must land where it came from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from inference import segment
from inference.networks.atlasnet import DualDecoderSegNet
from inference.networks.unet import UNet2D
from inference.phantoms import make_phantom
from inference.records import sha256_file
from inference.registration.fields import (
    grid_points_lps,
    sample_at_points,
    sample_displacement,
)
from inference.segmentation import get_engine
from inference.segmentation.atlasnet_engine import (
    AtlasNetEngine,
    AtlasTemplate,
    RegistrationSettings,
    _majority,
    _warp_through,
    map_case_to_template,
)
from inference.segmentation.engines import EngineUnavailable
from inference.segmentation.metrics import dice
from inference.segmentation.unet_engine import UNetEngine
from inference.segmentation.weights import (
    METADATA_FILE,
    InputSpec,
    ModelMetadata,
    WeightsError,
    read_metadata,
    save_model,
)
from inference.training.datasets import SegmentationCase
from inference.training.train import make_template
from inference.volume import Volume

SIZE = 48
SPEC = InputSpec(in_plane_size=(SIZE, SIZE))
REGISTRATION = RegistrationSettings(
    spacing_mm=12.0,
    params={
        "affine_levels_mm": [24.0],
        "affine_iterations": [10],
        "levels_mm": [24.0],
        "iterations": [5],
    },
)


def _hu(x: torch.Tensor) -> torch.Tensor:
    lo, hi = SPEC.hu_window
    return x * (hi - lo) / 2 + (hi + lo) / 2


class ThresholdSegNet(nn.Module):
    """Lung below -250 HU, disease between -700 and -250 HU (logits, two decoders)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hu = _hu(x)
        lung = (-250.0 - hu) / 10.0
        disease = torch.minimum(hu + 700.0, -250.0 - hu) / 10.0
        zeros = torch.zeros_like(hu)
        return torch.cat([zeros, lung], 1), torch.cat([zeros, disease], 1)


class LeftHalfUNet(nn.Module):
    """Calls "lung" the left half of every slice (columns i < W/2): orientation-sensitive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        left = (torch.arange(w) < w // 2).float().expand(n, 1, h, w) * 10.0
        zeros = torch.zeros(n, 1, h, w)
        return torch.cat([zeros, left, zeros - 10.0], 1)


def _case(
    seed: int, extent: float = 15.0, shape_kji: tuple[int, int, int] = (12, SIZE, SIZE)
) -> SegmentationCase:
    phantom = make_phantom(seed=seed, shape_kji=shape_kji, extent_pct=extent)
    return SegmentationCase(
        case_id=f"s{seed}",
        group=f"s{seed}",
        ct=phantom.ct,
        labels=phantom.labels,
        annotated=np.ones(shape_kji[0], bool),
    )


@pytest.fixture(scope="module")
def cases() -> list[SegmentationCase]:
    return [_case(seed) for seed in (31, 32, 33)]


def _threshold_labels(ct: Volume) -> np.ndarray:
    x = torch.from_numpy(SPEC.normalise(ct.array))[:, None]
    lung_logits, disease_logits = ThresholdSegNet()(x)
    lung = lung_logits.argmax(1).numpy() > 0
    disease = disease_logits.argmax(1).numpy() > 0
    return np.where(lung & disease, 2, np.where(lung, 1, 0))


def test_majority_vote_and_ties() -> None:
    votes = np.array([0, 1, 2, 3], np.uint8)
    assert _majority(votes, None, 3).tolist() == [False, False, True, True]
    sums = np.array([0, 255, 250, 0], np.uint16)  # tie at 1 of 2: mean prob decides
    two = np.array([0, 1, 1, 2], np.uint8)
    assert _majority(two, sums, 2).tolist() == [False, True, False, True]


def test_a_template_maps_onto_itself_and_back(cases: list[SegmentationCase]) -> None:
    template = make_template(cases[0], SIZE)
    mapping = map_case_to_template(template, cases[0].ct, REGISTRATION)
    warped = mapping.case_to_template(cases[0].labels, interpolation="nearest")
    assert dice(warped > 0, template.labels.array > 0) > 0.9
    back: list[np.ndarray] = []
    channels = (np.asarray(template.labels.array) > 0).astype(np.float32)[None]
    mapping.template_to_case(channels, lambda k0, k1, v: back.append(v[..., 0]))
    assert dice(np.concatenate(back) >= 0.5, cases[0].labels.array > 0) > 0.9


def _oblique(volume: Volume, degrees: float) -> Volume:
    angle = math.radians(degrees)
    rotation = np.array(
        [
            [math.cos(angle), -math.sin(angle), 0.0],
            [math.sin(angle), math.cos(angle), 0.0],
            [0.0, 0.0, 1.0],
        ]
    )
    return Volume(volume.array, volume.spacing_mm, volume.origin_lps_mm, rotation)


def _reference_warp(
    source: np.ndarray, source_grid: Volume, field: np.ndarray, field_grid: Volume, target: Volume
) -> np.ndarray:
    """Point by point, in float64 LPS millimetres: y + w(y), then the source there."""
    points = grid_points_lps(target)
    points = points + sample_displacement(field, field_grid, points)
    return sample_at_points(torch.from_numpy(source)[None, None], source_grid, points)[..., 0]


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
            ],
        ),
    ],
)
def test_the_warp_samples_the_source_through_the_field(device: str) -> None:
    rng = np.random.default_rng(5)
    source_grid = _oblique(Volume(np.zeros((9, 20, 22), np.float32), (1.5, 1.2, 2.5)), 12.0)
    source = rng.normal(size=source_grid.shape_kji).astype(np.float32)
    field_grid = Volume(np.zeros((4, 6, 7), np.float32), (6.0, 6.0, 6.0), (-3.0, -2.0, 1.0))
    field = rng.normal(scale=2.0, size=(*field_grid.shape_kji, 3)).astype(np.float32)
    target = _oblique(Volume(np.zeros((7, 16, 18), np.float32), (1.7, 1.4, 3.0), (1, 2, 0)), -7)
    expected = _reference_warp(source, source_grid, field, field_grid, target)
    assert np.abs(expected).max() > 0.5  # the target overlaps the source
    got = _warp_through(
        torch.from_numpy(source)[None, None], source_grid, field, field_grid, target, device=device
    )
    assert got is not None and got.shape == (*target.shape_kji, 1)
    np.testing.assert_allclose(got[..., 0], expected, atol=1e-4)
    slabs: list[np.ndarray] = []
    _warp_through(
        torch.from_numpy(np.stack([source, -source]))[None],
        source_grid,
        field,
        field_grid,
        target,
        consume=lambda k0, k1, values: slabs.append(values),
        device=device,
    )
    both = np.concatenate(slabs)
    np.testing.assert_allclose(both[..., 0], expected, atol=1e-4)
    np.testing.assert_allclose(both[..., 1], -expected, atol=1e-4)


def _threshold_ensemble(template_cases: list[SegmentationCase], **options: Any) -> AtlasNetEngine:
    """Threshold networks on templates made from ``template_cases``, one each."""
    return AtlasNetEngine(
        [ThresholdSegNet() for _ in template_cases],
        [make_template(c, SIZE) for c in template_cases],
        input_spec=SPEC,
        registration=REGISTRATION,
        **options,
    )


def test_re_voting_cached_probabilities_gives_the_engines_labels(
    cases: list[SegmentationCase],
) -> None:
    """Training tries ILD cuts on probabilities kept from one run of the networks; each cut
    must give what the engine itself gives at that cut."""
    engine = _threshold_ensemble(cases[:2], class_weights=((1.0, 4.0), (1.0, 65.0)))
    ct = cases[2].ct
    mappings = engine.map_case(ct)
    probabilities = engine.case_probabilities(ct, mappings)
    assert len(probabilities) == 2 and probabilities[0].shape == (*ct.shape_kji, 2)
    calls = []
    for cut in (0.02, 0.5):
        engine.ild_threshold = cut
        labels = engine.predict_ensemble(ct, mappings=mappings).result.label_map.array
        again = engine.labels_from_probabilities(ct, probabilities, cut)
        np.testing.assert_array_equal(again, labels)
        calls.append(int(np.count_nonzero(labels == 2)))
    assert calls[0] > calls[1] > 0  # the lower cut calls more ILD


def test_the_ensemble_maps_predictions_back_to_the_case_grid(
    cases: list[SegmentationCase],
) -> None:
    engine = _threshold_ensemble(cases[:2], model_version="test")
    ct = cases[2].ct
    prediction = engine.predict_ensemble(ct)
    result = prediction.result
    assert result.label_map.same_grid(ct)
    assert result.engine == "atlasnet" and result.version.endswith("/test")
    assert {"register", "warp", "network", "map_back", "vote"} <= set(result.timings_s)
    fraction = prediction.ild_vote_fraction().array
    assert set(np.unique(fraction)) <= {0.0, 0.5, 1.0}
    assert prediction.ild_votes.same_grid(ct)
    # The same threshold applied on the case's own grid, restricted to the body like the engine:
    direct = _threshold_labels(ct)
    lung = result.label_map.array > 0
    assert dice(lung, (direct > 0) & (cases[2].labels.array > 0)) > 0.85
    assert dice(lung, cases[2].labels.array > 0) > 0.85
    assert not (result.label_map.array == 2)[~lung].any()


class ConstantSegNet(nn.Module):
    """Lung everywhere (p 0.99); disease with a softmax probability of 0.9 everywhere."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = torch.zeros_like(x)
        return torch.cat([zeros, zeros + math.log(99.0)], 1), torch.cat(
            [zeros, zeros + math.log(9.0)], 1
        )


class ConstantUNet(nn.Module):
    """Softmax (0.02, 0.18, 0.80) everywhere: ILD by argmax, lung once the weights are removed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        logits = torch.log(torch.tensor([0.02, 0.18, 0.80]))[None, :, None, None]
        return logits.expand(n, 3, h, w).clone()


def test_the_class_weights_prior_shift_is_removed_before_voting(
    cases: list[SegmentationCase],
) -> None:
    templates = [make_template(cases[0], SIZE)]
    ct = cases[1].ct
    plain = AtlasNetEngine(
        [ConstantSegNet()], templates, input_spec=SPEC, registration=REGISTRATION
    )
    mappings = plain.map_case(ct)
    raw = plain.predict_ensemble(ct, mappings=mappings).result.label_map.array
    corrected_engine = AtlasNetEngine(
        [ConstantSegNet()],
        templates,
        input_spec=SPEC,
        registration=REGISTRATION,
        class_weights=((1.0, 4.0), (1.0, 65.0)),
    )
    corrected = corrected_engine.predict_ensemble(ct, mappings=mappings).result
    labels = corrected.label_map.array
    # Disease p~ 0.9 is p = (0.9/65) / (0.9/65 + 0.1) ≈ 0.12 once the weight 65 is removed;
    # lung p~ 0.99 stays lung (p ≈ 0.96).
    assert (raw == 2).sum() > 0.5 * (raw > 0).sum()
    # (the lung only loses voxels at the template grid's edge, where the mapped-back
    # probability fades to 0 and the corrected one crosses 0.5 a little earlier)
    assert 0.99 * (raw > 0).sum() <= (labels > 0).sum() <= (raw > 0).sum()
    assert not (labels == 2).any()
    assert corrected.parameters["class_weights_removed"] == [[1.0, 4.0], [1.0, 65.0]]

    unet_ct = cases[0].ct
    raw_unet = UNetEngine(ConstantUNet(), input_spec=SPEC).predict(unet_ct).label_map.array
    fixed_unet = UNetEngine(ConstantUNet(), input_spec=SPEC, class_weights=(1.0, 4.0, 65.0))
    labels_unet = fixed_unet.predict(unet_ct).label_map.array
    assert (raw_unet == 2).any() and not (raw_unet == 1).any()
    assert np.array_equal(labels_unet > 0, raw_unet > 0) and not (labels_unet == 2).any()


def test_unet_engine_respects_the_scan_orientation(cases: list[SegmentationCase]) -> None:
    engine = UNetEngine(LeftHalfUNet(), input_spec=SPEC, restrict_to_body=False)
    ct = cases[0].ct
    flipped = Volume(
        np.ascontiguousarray(ct.array[:, :, ::-1]),
        ct.spacing_mm,
        tuple(ct.index_to_lps([ct.shape_kji[2] - 1, 0, 0])),  # type: ignore[arg-type]
        ct.direction @ np.diag([-1.0, 1.0, 1.0]),
    )
    plain = engine.predict(ct).label_map.array
    mirrored = engine.predict(flipped).label_map.array
    assert plain[:, :, : SIZE // 2].all() and not plain[:, :, SIZE // 2 :].any()
    assert np.array_equal(mirrored[:, :, ::-1], plain)


def _save_unet(folder: Path, *, width: float = 1 / 32, size: int = 32) -> Path:
    torch.manual_seed(0)
    network = UNet2D(width=width)
    metadata = ModelMetadata(
        model="unet",
        version="unet-test",
        input_spec=InputSpec(in_plane_size=(size, size)),
        network_class="UNet2D",
        hyperparameters={"width": width},
        networks=["network_00.pt"],
    )
    save_model(folder, metadata, state_dicts={"network_00.pt": network.state_dict()})
    return folder


def _save_atlasnet(folder: Path, cases: list[SegmentationCase]) -> Path:
    torch.manual_seed(0)
    templates = [make_template(c, SIZE) for c in cases[:2]]
    entries = [
        {"ct": f"t{t}_ct.nii.gz", "labels": f"t{t}_labels.nii.gz", "network": f"n{t}.pt"}
        for t in range(2)
    ]
    metadata = ModelMetadata(
        model="atlasnet",
        version="atlasnet-test",
        input_spec=SPEC,
        network_class="DualDecoderSegNet",
        hyperparameters={"width": 1 / 32},
        networks=[e["network"] for e in entries],
        templates=entries,  # type: ignore[arg-type]
        registration=REGISTRATION.as_dict(),
    )
    volumes = {}
    for entry, template in zip(entries, templates, strict=True):
        volumes[entry["ct"]], volumes[entry["labels"]] = template.ct, template.labels
    states = {e["network"]: DualDecoderSegNet(width=1 / 32).state_dict() for e in entries}
    save_model(folder, metadata, state_dicts=states, volumes=volumes)
    return folder


def test_get_engine_loads_a_saved_atlasnet(cases: list[SegmentationCase], tmp_path: Path) -> None:
    folder = _save_atlasnet(tmp_path / "atlas", cases)
    engine = get_engine("atlasnet", weights=folder, device="cpu")
    assert engine.version.endswith("atlasnet-test")
    assert isinstance(engine, AtlasNetEngine) and len(engine.networks) == 2
    result = engine.predict(cases[2].ct)
    assert result.label_map.same_grid(cases[2].ct)


def test_the_training_class_weights_are_read_from_the_model_folder(
    cases: list[SegmentationCase], tmp_path: Path
) -> None:
    folder = _save_unet(tmp_path / "u")
    assert UNetEngine.from_folder(folder).class_weights is None
    _rewrite(folder, lambda d: d.update(training={"config": {"unet_class_weights": [1, 4, 65]}}))
    assert UNetEngine.from_folder(folder).class_weights == (1.0, 4.0, 65.0)
    _rewrite(folder, lambda d: d.update(training={"config": {"unet_class_weights": [1, 4]}}))
    with pytest.raises(WeightsError, match="unet_class_weights"):
        UNetEngine.from_folder(folder)

    atlas = _save_atlasnet(tmp_path / "a", cases)
    assert AtlasNetEngine.from_folder(atlas).class_weights is None
    config = {"lung_weights": [1, 4], "disease_weights": [1, 65]}
    _rewrite(atlas, lambda d: d.update(training={"config": config}))
    assert AtlasNetEngine.from_folder(atlas).class_weights == ((1.0, 4.0), (1.0, 65.0))
    bad = {"lung_weights": [1, 4], "disease_weights": [1, -65]}
    _rewrite(atlas, lambda d: d.update(training={"config": bad}))
    with pytest.raises(WeightsError, match="class weights"):
        AtlasNetEngine.from_folder(atlas)


def test_without_weights_the_error_says_how_to_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ILD_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(EngineUnavailable, match=r"python -m inference\.train_segmentation"):
        get_engine("atlasnet")
    with pytest.raises(EngineUnavailable, match="no trained unet model"):
        get_engine("unet", weights=tmp_path / "nowhere")


def test_the_default_model_folder_is_used_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ILD_MODELS_DIR", str(tmp_path / "models"))
    _save_unet(tmp_path / "models" / "unet")
    assert get_engine("unet").version.endswith("unet-test")


def _rewrite(folder: Path, edit: object) -> None:
    path = folder / METADATA_FILE
    data = json.loads(path.read_text())
    edit(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))


def test_a_replaced_weights_file_is_refused(tmp_path: Path) -> None:
    folder = _save_unet(tmp_path / "m")
    torch.save(UNet2D(width=1 / 32).state_dict(), folder / "network_00.pt")
    with pytest.raises(EngineUnavailable, match="SHA-256"):
        get_engine("unet", weights=folder)


def test_weights_of_another_shape_are_refused(tmp_path: Path) -> None:
    folder = _save_unet(tmp_path / "m")
    _rewrite(folder, lambda d: d["network"]["hyperparameters"].update(width=1 / 16))
    with pytest.raises(WeightsError, match="do not fit"):
        UNetEngine.from_folder(folder)


def test_pickled_objects_are_not_loaded(tmp_path: Path) -> None:
    folder = _save_unet(tmp_path / "m")
    torch.save({"weight": Path("/etc")}, folder / "network_00.pt")
    digest = sha256_file(folder / "network_00.pt")
    _rewrite(folder, lambda d: d["files"].update({"network_00.pt": digest}))
    with pytest.raises(WeightsError, match="not a loadable weights file"):
        UNetEngine.from_folder(folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["input_spec"].update(in_plane_size=[40, 40]), "multiple of 16"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d["labels"].update({"2": "tumour"}), "labels"),
        (lambda d: d["network"].update({"class": "ResNet"}), "unknown network class"),
        (lambda d: d["network"]["hyperparameters"].update(dropout=0.5), "hyper-parameters"),
    ],
)
def test_a_bad_metadata_field_is_named(tmp_path: Path, edit: object, message: str) -> None:
    folder = _save_unet(tmp_path / "m")
    _rewrite(folder, edit)
    with pytest.raises(WeightsError, match=message):
        UNetEngine.from_folder(folder)


def test_a_unet_folder_is_not_an_atlasnet(tmp_path: Path) -> None:
    folder = _save_unet(tmp_path / "m")
    with pytest.raises(WeightsError, match="not atlasnet"):
        read_metadata(folder, model="atlasnet")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_asked_for_without_cuda_is_unavailable(tmp_path: Path) -> None:
    folder = _save_unet(tmp_path / "m")
    with pytest.raises(EngineUnavailable, match="CUDA"):
        get_engine("unet", weights=folder, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_unet_runs_on_cuda(cases: list[SegmentationCase], tmp_path: Path) -> None:
    folder = _save_unet(tmp_path / "m")
    engine = get_engine("unet", weights=folder, device="cuda")
    assert engine.predict(cases[0].ct).label_map.same_grid(cases[0].ct)


def test_the_segment_cli_runs_a_network_engine(
    cases: list[SegmentationCase], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inference.imageio import read_image, write_image

    ct_path = write_image(cases[0].ct, tmp_path / "ct.nii.gz")
    folder = _save_unet(tmp_path / "m")
    out = tmp_path / "labels.nii.gz"
    args = [str(ct_path), "--engine", "unet", "--weights", str(folder), "-o", str(out)]
    assert segment.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["engine"] == "unet"
    assert read_image(out).same_grid(cases[0].ct)
    missing = [
        str(ct_path),
        "--engine",
        "atlasnet",
        "--weights",
        str(tmp_path / "x"),
        "-o",
        str(out),
    ]
    assert segment.main(missing) == 3
    assert "train_segmentation" in capsys.readouterr().err


def test_the_ild_cut_decides_where_a_network_calls_ild(cases: list[SegmentationCase]) -> None:
    templates = [make_template(cases[0], SIZE)]
    ct = cases[1].ct
    weights = ((1.0, 4.0), (1.0, 65.0))  # corrected disease p ≈ 0.12 everywhere

    def atlas_labels(cut: float) -> np.ndarray:
        engine = AtlasNetEngine(
            [ConstantSegNet()],
            templates,
            input_spec=SPEC,
            registration=REGISTRATION,
            class_weights=weights,
            ild_threshold=cut,
        )
        result = engine.predict_ensemble(ct, mappings=mappings).result
        assert result.parameters["ild_threshold"] == cut
        return np.asarray(result.label_map.array)

    mappings = AtlasNetEngine(
        [ConstantSegNet()], templates, input_spec=SPEC, registration=REGISTRATION
    ).map_case(ct)
    low, high = atlas_labels(0.1), atlas_labels(0.15)
    assert np.array_equal(low > 0, high > 0)  # the lung does not move with the cut
    # ILD in the whole lung under the cut (but a rim at the template grid's edge, where the
    # mapped-back probability fades), none above it
    assert (low == 2).sum() >= 0.99 * (low > 0).sum() > 0 and not (high == 2).any()

    # U-Net, corrected softmax (0.26, 0.58, 0.16): lung everywhere, ILD only under a cut ≤ 0.16
    unet_ct = cases[0].ct
    argmax = UNetEngine(ConstantUNet(), input_spec=SPEC, class_weights=(1.0, 4.0, 65.0))
    plain = np.asarray(argmax.predict(unet_ct).label_map.array)
    for cut, ild in ((0.15, True), (0.2, False)):
        engine = UNetEngine(
            ConstantUNet(), input_spec=SPEC, class_weights=(1.0, 4.0, 65.0), ild_threshold=cut
        )
        result = engine.predict(unet_ct)
        labels = np.asarray(result.label_map.array)
        assert np.array_equal(labels > 0, plain > 0)
        lung = labels > 0
        assert lung.any()
        assert (labels[lung] == 2).all() if ild else not (labels == 2).any()
        assert result.parameters["ild_threshold"] == cut
    with pytest.raises(ValueError, match="ild_threshold"):
        UNetEngine(ConstantUNet(), input_spec=SPEC, ild_threshold=1.0)


def test_the_ild_cut_is_read_from_the_model_folder(
    cases: list[SegmentationCase], tmp_path: Path
) -> None:
    folder = _save_unet(tmp_path / "u")
    assert UNetEngine.from_folder(folder).ild_threshold is None  # a model without one: argmax
    _rewrite(folder, lambda d: d.update(training={"ild_threshold": {"value": 0.3}}))
    assert UNetEngine.from_folder(folder).ild_threshold == 0.3
    _rewrite(folder, lambda d: d.update(training={"ild_threshold": {"value": 1.5}}))
    with pytest.raises(WeightsError, match="ild_threshold"):
        UNetEngine.from_folder(folder)

    atlas = _save_atlasnet(tmp_path / "a", cases)
    assert AtlasNetEngine.from_folder(atlas).ild_threshold == 0.5
    _rewrite(atlas, lambda d: d.update(training={"ild_threshold": {"value": 0.35}}))
    assert AtlasNetEngine.from_folder(atlas).ild_threshold == 0.35


def test_a_template_cut_to_its_lungs_sees_nothing_beyond_them() -> None:
    """A network that calls lung everywhere, on a template cut to its lungs and 10 mm: the
    case's lungs are all inside what comes back, nothing well outside the case's own lung box
    is (the whole-field template reaches it)."""
    from inference.training.train import lung_box

    template_case, case = (_case(seed, shape_kji=(24, 64, 64)) for seed in (31, 32))
    truth = np.asarray(case.labels.array) > 0
    outside = np.ones(truth.shape, bool)
    outside[lung_box(case, 30.0)] = False
    assert outside.sum() > 0.2 * outside.size

    def lung_called(template: AtlasTemplate) -> np.ndarray:
        engine = AtlasNetEngine(
            [ConstantSegNet()],
            [template],
            input_spec=SPEC,
            registration=REGISTRATION,
            restrict_to_body=False,
        )
        return np.asarray(engine.predict(case.ct).label_map.array) > 0

    whole = lung_called(make_template(template_case, SIZE))
    cut = lung_called(make_template(template_case, SIZE, margin_mm=10.0))
    assert cut[truth].mean() > 0.99
    assert whole[outside].mean() > 0.5
    assert cut[outside].mean() < 0.01


def test_no_lung_is_called_outside_the_body_of_a_ct_finer_than_the_vote_grid() -> None:
    """A network that calls lung everywhere: what is left is the body, on the CT's own voxels
    (the 64 px CT is voted on a 48 px grid)."""
    from inference.networks.slicewise import body_mask

    template_case, case = (_case(seed, shape_kji=(12, 64, 64)) for seed in (31, 32))
    engine = AtlasNetEngine(
        [ConstantSegNet()],
        [make_template(template_case, SIZE)],
        input_spec=SPEC,
        registration=REGISTRATION,
    )
    assert engine.vote_grid(case.ct).shape_kji[1:] == (SIZE, SIZE)
    lung = np.asarray(engine.predict(case.ct).label_map.array) > 0
    body = body_mask(np.asarray(case.ct.array))
    assert not lung[~body].any()
    assert lung[body].mean() > 0.9
