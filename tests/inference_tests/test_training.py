"""Training data folders, the split, the schedule, and tiny seeded training runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inference import train_segmentation
from inference.phantoms import write_cohort
from inference.records import sha256_file
from inference.segmentation.atlasnet_engine import AtlasNetEngine, RegistrationSettings
from inference.segmentation.unet_engine import UNetEngine
from inference.segmentation.weights import METADATA_FILE, read_metadata
from inference.training.datasets import (
    DatasetError,
    ExportCase,
    SegmentationCase,
    find_cases,
    load_dataset,
    split_cases,
    write_contour_export,
)
from inference.training.train import (
    TrainConfig,
    choose_ild_threshold,
    choose_templates,
    train_model,
)
from inference.volume import Volume

SHAPE = (8, 32, 32)
# Registration small enough for a test: one 16 mm level, a few iterations.
TINY_REGISTRATION = RegistrationSettings(
    spacing_mm=12.0,
    params={
        "affine_levels_mm": [24.0],
        "affine_iterations": [5],
        "levels_mm": [24.0],
        "iterations": [3],
    },
)


def tiny_config(model: str, **changes: object) -> TrainConfig:
    options: dict[str, object] = {
        "model": model,
        "in_plane_size": 32,
        "width": 1 / 32,
        "templates": 2,
        "epochs": 2,
        "batch_size": 4,
        "lr_decrease_every": 1,
        "registration": TINY_REGISTRATION,
        "validation_fraction": 0.25,
        "threads": 1,
    }
    options.update(changes)
    return TrainConfig(**options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, patients=4, seed=21, shape_kji=SHAPE, followup=False)
    return out


def test_a_phantom_cohort_is_read_with_a_stable_digest(cohort: Path) -> None:
    first = load_dataset(cohort)
    again = load_dataset(cohort)
    assert first.kind == "phantom-cohort"
    assert [c.case_id for c in first.cases] == [f"P00{n}-baseline" for n in range(1, 5)]
    assert first.digest == again.digest and first.digest.startswith("sha256:")
    case = first.cases[0]
    assert case.ct.same_grid(case.labels)
    assert case.annotated.all()
    assert set(np.unique(case.labels.array)) <= {0, 1, 2}


def test_an_export_round_trips_with_partial_annotation(cohort: Path, tmp_path: Path) -> None:
    case = load_dataset(cohort).cases[0]
    export = ExportCase(
        case_id="RS1-C001-reader-a",
        ct=case.ct,
        labels=case.labels,
        annotated_slices=[2, 3, 5],
        group="PAT-1",
        provenance={"series_instance_uid": "1.2.3", "reader": "reader-a"},
    )
    manifest = write_contour_export(tmp_path / "export", [export])
    data = json.loads(manifest.read_text())
    assert data["format"] == "ild-review-segmentation-dataset"
    assert data["cases"][0]["annotated_slices"] == [2, 3, 5]
    dataset = load_dataset(tmp_path / "export")
    loaded = dataset.cases[0]
    assert dataset.kind == "contour-export"
    assert loaded.group == "PAT-1"
    assert loaded.annotated.tolist() == [k in (2, 3, 5) for k in range(SHAPE[0])]
    assert np.array_equal(loaded.labels.array, case.labels.array)
    assert loaded.provenance["reader"] == "reader-a"
    # Other annotated slices, other digest.
    write_contour_export(
        tmp_path / "export2", [ExportCase(export.case_id, case.ct, case.labels, [2, 3])]
    )
    assert load_dataset(tmp_path / "export2").digest != dataset.digest


def test_an_ild_only_export_gets_its_lung_from_the_classical_engine(
    cohort: Path, tmp_path: Path
) -> None:
    case = load_dataset(cohort).cases[1]
    ild_only = case.labels.with_array((case.labels.array == 2).astype(np.uint8) * 2)
    write_contour_export(
        tmp_path / "ild", [ExportCase("c1", case.ct, ild_only, None, lung="classical")]
    )
    loaded = load_dataset(tmp_path / "ild").cases[0]
    assert np.count_nonzero(loaded.labels.array == 1) > 0
    assert np.array_equal(loaded.labels.array == 2, case.labels.array == 2)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="other"), "format"),
        (lambda d: d["cases"][0].update(case_id="../up"), "case_id"),
        (lambda d: d["cases"][0].update(annotated_slices="all"), "annotated_slices"),
        (lambda d: d["cases"].append(dict(d["cases"][0])), "duplicate"),
        (lambda d: d["cases"][0].update(lung="guess"), "lung"),
    ],
)
def test_a_malformed_export_is_refused_naming_the_field(
    cohort: Path, tmp_path: Path, edit: object, message: str
) -> None:
    case = load_dataset(cohort).cases[0]
    path = write_contour_export(tmp_path / "bad", [ExportCase("c1", case.ct, case.labels)])
    data = json.loads(path.read_text())
    edit(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=message):
        find_cases(tmp_path / "bad")


def test_labels_off_the_ct_grid_are_refused(cohort: Path, tmp_path: Path) -> None:
    case = load_dataset(cohort).cases[0]
    moved = Volume(case.labels.array, case.labels.spacing_mm, (5.0, 0.0, 0.0))
    with pytest.raises(DatasetError, match="grid"):
        write_contour_export(tmp_path / "x", [ExportCase("c1", case.ct, moved)])


def test_a_folder_without_a_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset\.json"):
        load_dataset(tmp_path)


def test_split_is_by_group_and_seeded(cohort: Path) -> None:
    cases = load_dataset(cohort).cases
    train, val = split_cases(cases, validation_fraction=0.25, seed=3)
    again = split_cases(cases, validation_fraction=0.25, seed=3)
    assert [c.case_id for c in train] == [c.case_id for c in again[0]]
    assert len(val) == 1 and len(train) == 3
    assert not {c.group for c in train} & {c.group for c in val}


def test_templates_spread_over_lung_volume(cohort: Path) -> None:
    cases = load_dataset(cohort).cases
    picked = choose_templates(cases, 2)
    volumes = sorted(c.lung_ml for c in cases)
    assert picked[0].lung_ml < picked[1].lung_ml
    assert picked[0].lung_ml <= volumes[1] and picked[1].lung_ml >= volumes[2]
    with pytest.raises(ValueError, match="templates"):
        choose_templates(cases, 5)


def test_the_learning_rate_follows_the_papers_steps() -> None:
    config = TrainConfig()
    assert [config.learning_rate_at(e) for e in (0, 9, 10, 20, 30)] == pytest.approx(
        [0.01, 0.01, 0.0075, 0.005, 0.0025]
    )
    assert config.learning_rate_at(45) == pytest.approx(config.min_learning_rate)
    assert (config.momentum, config.weight_decay) == (0.9, 5e-4)


def test_an_unknown_decoder_upsampling_is_refused() -> None:
    assert TrainConfig(decoder_upsampling="nearest").decoder_upsampling == "nearest"
    with pytest.raises(ValueError, match="decoder_upsampling"):
        TrainConfig(decoder_upsampling="bilinear")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def trained(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("models")
    dataset = load_dataset(cohort)
    for model in ("atlasnet", "unet"):
        config = tiny_config(model, template_margin_mm=10.0 if model == "atlasnet" else None)
        train_model(dataset, config, out / model, log=lambda _: None)
    return {"atlasnet": out / "atlasnet", "unet": out / "unet", "root": out, "cohort": cohort}


@pytest.mark.parametrize("model", ["atlasnet", "unet"])
def test_training_writes_weights_and_metadata(trained: dict[str, Path], model: str) -> None:
    folder = trained[model]
    metadata = read_metadata(folder, model=model)  # type: ignore[arg-type]
    data = json.loads((folder / METADATA_FILE).read_text())
    assert data["labels"] == {"0": "background", "1": "lung without ILD", "2": "ILD"}
    assert data["input_spec"]["in_plane_size"] == [32, 32]
    assert data["training"]["dataset_digest"].startswith("sha256:")
    assert data["version"].startswith(f"{model}-")
    assert data["validation"]["cases"] and "dice_lung" in data["validation"]
    assert data["training"]["config"]["learning_rate"] == 0.01
    assert len(metadata.networks) == (2 if model == "atlasnet" else 1)
    if model == "atlasnet":
        assert len(data["templates"]) == 2
        assert data["registration"]["spacing_mm"] == 12.0
        assert len(data["validation"]["per_template"]) == 2
        # The decoders' upsampling is a hyper-parameter the engine rebuilds the networks with.
        assert data["network"]["hyperparameters"]["upsampling"] == "indices"
        for network in AtlasNetEngine.from_folder(folder).networks:
            assert network.disease_decoder.upsampling == "indices"
        # The templates were cut to their lungs and 10 mm: finer pixels than the cases'.
        assert data["training"]["config"]["template_margin_mm"] == 10.0
        case_spacing = load_dataset(trained["cohort"]).cases[0].ct.spacing_mm
        for template in AtlasNetEngine.from_folder(folder).templates:
            assert template.ct.spacing_mm[0] < case_spacing[0]
    # The ILD cut chosen on the validation split is recorded, with the Dice of every cut tried,
    # and the engine loaded from the folder uses it.
    cut = data["training"]["ild_threshold"]
    if cut is not None:
        assert cut["chosen_on"] == "validation"
        assert cut["value"] in data["training"]["config"]["ild_thresholds"]
        assert f"{cut['value']:g}" in cut["median_slice_dice"]
        best = max(cut["median_slice_dice"].values())
        assert cut["median_slice_dice"][f"{cut['value']:g}"] == best
        engine_class = AtlasNetEngine if model == "atlasnet" else UNetEngine
        assert engine_class.from_folder(folder).ild_threshold == cut["value"]


def test_the_ild_cut_with_the_best_validation_dice_is_chosen(cohort: Path) -> None:
    cases = load_dataset(cohort).cases[:2]

    def predict_at(cut: float, case: SegmentationCase) -> np.ndarray:
        truth = np.asarray(case.labels.array)
        if cut == 0.3:
            return truth  # the right answer
        return np.where(truth > 0, 1, 0).astype(np.uint8)  # misses every ILD voxel

    chosen = choose_ild_threshold(predict_at, cases, (0.2, 0.3, 0.5))
    assert chosen is not None and chosen["value"] == 0.3
    assert chosen["median_slice_dice"] == {"0.2": 0.0, "0.3": 1.0, "0.5": 0.0}
    # ties go to the cut nearest 0.5; no validation cases, no cut
    same = choose_ild_threshold(
        lambda cut, case: np.asarray(case.labels.array), cases, (0.2, 0.4, 0.7)
    )
    assert same is not None and same["value"] == 0.4
    assert choose_ild_threshold(predict_at, [], (0.3,)) is None


def test_a_trained_model_is_decided_without_its_class_weights_prior(
    trained: dict[str, Path],
) -> None:
    from inference.networks.losses import (
        PAPER_DISEASE_WEIGHTS,
        PAPER_LUNG_WEIGHTS,
        UNET_CLASS_WEIGHTS,
    )

    # The weights the networks were trained with travel in the model folder, and the engines
    # loaded from it remove their prior shift (see inference.networks.slicewise).
    atlas = AtlasNetEngine.from_folder(trained["atlasnet"])
    assert atlas.class_weights == (PAPER_LUNG_WEIGHTS, PAPER_DISEASE_WEIGHTS)
    assert UNetEngine.from_folder(trained["unet"]).class_weights == UNET_CLASS_WEIGHTS


def test_training_is_seeded(cohort: Path, trained: dict[str, Path], tmp_path: Path) -> None:
    train_model(load_dataset(cohort), tiny_config("unet"), tmp_path / "again", log=lambda _: None)
    assert sha256_file(tmp_path / "again" / "network_00.pt") == sha256_file(
        trained["unet"] / "network_00.pt"
    )


def test_the_cli_trains_into_the_folder_given(
    cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = train_segmentation.main(
        [
            str(cohort),
            "--model",
            "unet",
            "--out",
            str(tmp_path / "cli"),
            "--size",
            "32",
            "--width",
            "0.03125",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "unet"
    assert (tmp_path / "cli" / METADATA_FILE).is_file()


def test_the_cli_refuses_a_missing_dataset(tmp_path: Path) -> None:
    assert train_segmentation.main([str(tmp_path / "none"), "--quiet"]) == 4
    assert train_segmentation.main([str(tmp_path), "--size", "30", "--quiet"]) == 2


def test_only_annotated_slices_are_trained_on(cohort: Path, tmp_path: Path) -> None:
    from inference.training.train import SliceSet, case_slices, make_template, warped_slices

    case = load_dataset(cohort).cases[0]
    write_contour_export(tmp_path / "p", [ExportCase("c1", case.ct, case.labels, [1, 4, 6])])
    partial = load_dataset(tmp_path / "p").cases[0]
    slices: SliceSet = case_slices(partial, 32).keep_annotated()
    assert len(slices) == 3
    template = make_template(partial, 32)
    own = warped_slices(partial, template, None)
    assert own.valid.any(axis=(1, 2)).tolist() == partial.annotated.tolist()
    # On a template cropped to the lungs, the same slices, where the crop keeps them.
    from inference.training.train import lung_box

    kept, _, _ = lung_box(partial, 10.0)
    cropped = make_template(partial, 32, margin_mm=10.0)
    own = warped_slices(partial, cropped, None)
    assert own.valid.any(axis=(1, 2)).tolist() == partial.annotated[kept].tolist()


def test_a_template_grid_covers_its_lungs_and_the_margin(cohort: Path) -> None:
    from inference.training.train import lung_box, make_template

    case = load_dataset(cohort).cases[0]
    whole = make_template(case, 32)
    boxed = make_template(case, 32, margin_mm=10.0)

    # The same 32 x 32 pixels over a smaller field: finer in both directions, never coarser
    # along the slices.
    assert boxed.ct.shape_kji[1:] == whole.ct.shape_kji[1:] == (32, 32)
    assert boxed.ct.spacing_mm[0] < whole.ct.spacing_mm[0]
    assert boxed.ct.spacing_mm[1] < whole.ct.spacing_mm[1]
    assert boxed.ct.shape_kji[0] <= whole.ct.shape_kji[0]
    # Every lung voxel of the case falls inside the template grid, at least the margin from
    # its edge where the case's own field of view allows it.
    lung_kji = np.argwhere(np.asarray(case.labels.array) > 0)
    points = case.labels.index_to_lps(lung_kji[:, ::-1].astype(np.float64))
    inside = boxed.ct.lps_to_index(points)
    n_i, n_j, n_k = boxed.ct.shape_kji[::-1]
    assert (inside >= -0.5).all() and (inside <= np.array([n_i, n_j, n_k]) - 0.5).all()
    box = lung_box(case, 10.0)
    assert all(b.start >= 0 for b in box) and all(
        b.stop <= n for b, n in zip(box, case.ct.shape_kji, strict=True)
    )
    # The template's lung is the case's lung, resampled.
    case_ml = np.count_nonzero(np.asarray(case.labels.array)) * case.labels.voxel_volume_ml
    boxed_ml = np.count_nonzero(np.asarray(boxed.labels.array)) * boxed.labels.voxel_volume_ml
    assert boxed_ml == pytest.approx(case_ml, rel=0.05)


def test_the_lung_box_reaches_below_the_last_annotated_slice(cohort: Path, tmp_path: Path) -> None:
    from inference.training.train import lung_box

    case = load_dataset(cohort).cases[0]
    write_contour_export(tmp_path / "p", [ExportCase("c1", case.ct, case.labels, [2, 3])])
    partial = load_dataset(tmp_path / "p").cases[0]
    # Contours on slices 2-3 only: the CT's own air still places the lungs on the other slices.
    assert lung_box(partial, 0.0) == lung_box(case, 0.0)


@pytest.mark.parametrize(
    ("argv", "margin"),
    [
        ([], 20.0),
        (["--preset", "paper"], None),
        (["--template-margin", "none"], None),
        (["--preset", "paper", "--template-margin", "12.5"], 12.5),
    ],
)
def test_the_cli_sets_the_template_margin_from_its_preset_or_option(
    argv: list[str], margin: float | None
) -> None:
    args = train_segmentation.build_parser().parse_args(["data", "--device", "cpu", *argv])
    assert train_segmentation.config_from_args(args).template_margin_mm == margin


@pytest.mark.parametrize(
    ("argv", "mode"), [([], "indices"), (["--decoder-upsampling", "nearest"], "nearest")]
)
def test_the_cli_sets_how_the_decoders_upsample(argv: list[str], mode: str) -> None:
    args = train_segmentation.build_parser().parse_args(["data", "--device", "cpu", *argv])
    assert train_segmentation.config_from_args(args).decoder_upsampling == mode


def test_the_cli_refuses_a_negative_template_margin(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        train_segmentation.build_parser().parse_args(["data", "--template-margin", "-1"])
    assert stop.value.code == 2
    assert "must be >= 0 mm" in capsys.readouterr().err
