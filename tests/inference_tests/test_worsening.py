"""The longitudinal worsening engine: template, template-space maps, Figure 5, CNN, model folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from inference.phantoms.generator import make_longitudinal_pair
from inference.volume import Volume
from inference.worsening import (
    InputSpec,
    LungTemplate,
    TemplateCase,
    TemplateError,
    TemplateSettings,
    TrainingConfig,
    WorseningCNN,
    WorseningModelError,
    build_template,
    choose_threshold,
    default_model,
    figure5,
    group_mean_maps,
    load_model,
    predict_worsening,
    render_projections,
    sagittal_projection,
    save_model,
    to_template,
)
from inference.worsening import classifier as classifier_module
from inference.worsening.classifier import (
    build_model,
    extent_comparator,
    stratified_split,
    train_target,
)

SHAPE = (24, 48, 48)  # 7.5 mm in-plane, 13.3 mm slices: tiny phantoms
SPACING_MM = 10.0
FAST = {
    "affine_levels_mm": [20.0],
    "affine_iterations": [25],
    "levels_mm": [20.0],
    "iterations": [20],
    "threads": 1,
    "seed": 0,
}
SETTINGS = TemplateSettings(spacing_mm=SPACING_MM, margin_mm=10.0, iterations=1, params=FAST)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pairs():
    tags = ("worse", "stable", "improved")
    return [
        make_longitudinal_pair(seed=11 + n, shape_kji=SHAPE, extent_pct=12.0, progression=tag)
        for n, tag in enumerate(tags)
    ]


@pytest.fixture(scope="module")
def build(pairs):
    cases = [TemplateCase(f"C{n}", p.baseline.ct, p.baseline.lungs_lr) for n, p in enumerate(pairs)]
    return build_template(cases, SETTINGS)


def _mse(a, b, inside):
    return float(np.mean((np.asarray(a)[inside] - np.asarray(b)[inside]) ** 2))


# ----------------------------------------------------------------------------------- template


def test_template_is_closer_to_every_warped_case_than_the_reference(build):
    template = build.template
    inside = template.lung.array > 0
    total_template = total_reference = 0.0
    for case_id, warped in build.warped_ct.items():
        to_template_mse = _mse(warped.array, template.ct.array, inside)
        to_reference_mse = _mse(warped.array, build.reference_ct.array, inside)
        total_template += to_template_mse
        total_reference += to_reference_mse
        if case_id != build.reference:
            assert to_template_mse < to_reference_mse, case_id
        dice = (
            2
            * np.sum((build.warped_lung[case_id].array >= 0.5) & inside)
            / (np.sum(build.warped_lung[case_id].array >= 0.5) + inside.sum())
        )
        assert dice > 0.8, case_id
    assert total_template < total_reference
    meta = template.metadata
    assert meta["reference_case"] == build.reference in ("C0", "C1", "C2")
    assert meta["registration"]["spacing_mm"] == SPACING_MM
    assert meta["cohort_digest"].startswith("sha256:")
    assert [p["pass"] for p in meta["passes"]] == [0, 1]
    assert template.ct.spacing_mm == (SPACING_MM,) * 3
    assert np.allclose(template.ct.direction, np.eye(3))


def test_template_folder_round_trip_and_corruption(build, tmp_path):
    folder = build.template.save(tmp_path / "template")
    loaded = LungTemplate.load(folder)
    assert loaded.digest == build.template.digest
    assert loaded.settings.params == build.template.settings.params
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["version"].startswith("1.0.0+") and meta["spacing_mm"] == SPACING_MM

    with pytest.raises(TemplateError, match="no template folder"):
        LungTemplate.load(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "template_ct.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(TemplateError, match="SHA-256"):
        LungTemplate.load(broken)
    meta["format_version"] = 99
    (broken / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(TemplateError, match="format_version"):
        LungTemplate.load(broken)


def test_to_template_preserves_a_constant_log_jacobian(build, pairs):
    baseline = pairs[0].baseline
    constant = baseline.ct.with_array(np.full(baseline.ct.shape_kji, 0.07, dtype=np.float32))
    mapped = to_template(constant, baseline.ct, baseline.lungs_lr, build.template)

    assert mapped.same_grid(build.template.ct)
    inside = build.template.lung.array > 0
    np.testing.assert_allclose(mapped.array[inside], 0.07, atol=1e-5)


# ------------------------------------------------------------------------------------ figures


def _box_lung(shape=(20, 16, 18)) -> Volume:
    k, j, i = np.indices(shape)
    centre = (np.array(shape) - 1) / 2
    inside = ((k - centre[0]) / 8.5) ** 2 + ((j - centre[1]) / 6.5) ** 2 + (
        (i - centre[2]) / 7.5
    ) ** 2 <= 1
    return Volume(inside.astype(np.uint8), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0), np.eye(3))


def test_group_map_and_projection_show_planted_posterior_basal_shrinkage(tmp_path):
    lung = _box_lung()
    rng = np.random.default_rng(0)
    k, j, _ = np.indices(lung.shape_kji)
    # k grows towards the head, j towards the back: the blob sits low and posterior
    blob = -0.2 * np.exp(-(((k - 5) / 3.0) ** 2 + ((j - 11) / 2.5) ** 2))
    maps, groups = [], []
    for n in range(8):
        worse = n % 2 == 0
        maps.append((blob if worse else 0.0) + rng.normal(0, 0.01, lung.shape_kji))
        groups.append("worse" if worse else "stable")

    means = group_mean_maps(maps, groups)
    assert means["worse"].count == 4 and means["stable"].count == 4
    projection = sagittal_projection(means["worse"].mean, lung)
    stable = sagittal_projection(means["stable"].mean, lung)
    rows = lung.shape_kji[0]
    # rows run superior -> inferior, columns anterior -> posterior
    row, col = rows - 1 - 5, 11
    assert projection[row, col] < -0.1
    assert abs(stable[row, col]) < 0.03
    assert np.isnan(projection[0, 0])  # no lung in that corner
    superior_anterior = projection[rows - 1 - 15, 4]
    assert abs(superior_anterior) < 0.03

    path = render_projections(
        [("Worse", projection), ("Stable", stable)],
        tmp_path / "fig.png",
        title="test",
        pixel_scale=3,
    )
    from PIL import Image

    image = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert image.shape[1] > 2 * 3 * lung.shape_kji[1]  # two panels and a colour bar
    # locate the blob's pixel: first panel at x = 16, panels start below the titles (y = 74)
    y, x = 74 + 3 * row + 1, 16 + 3 * col + 1
    r, g, b = image[y, x]
    assert b > r + 40, (r, g, b)  # blue = shrinkage

    out = figure5(
        maps,
        [g == "worse" for g in groups],
        ["worse" if g == "worse" else "stable" for g in groups],
        lung,
        tmp_path,
    )
    assert [p.split("/")[-1] for p in out["files"]] == [
        "figure5a_functional.png",
        "figure5b_morphologic.png",
    ]
    assert out["groups"]["Functional worsening"]["mean_in_lung"] < 0
    assert out["groups"]["Morphologic improvement"]["count"] == 0


# --------------------------------------------------------------------------------- classifier


def test_cnn_has_four_learnable_layers_and_outputs_a_probability():
    torch.manual_seed(0)
    network = WorseningCNN((12, 10, 12))
    layers = network.learnable_layers()
    assert len(layers) == 4
    assert [type(m).__name__ for m in layers] == ["Conv3d", "Conv3d", "Linear", "Linear"]
    network.eval()
    x = torch.randn(5, 1, 12, 10, 12)
    p = network.probability(x)
    assert p.shape == (5,)
    assert torch.all((p > 0) & (p < 1))
    with pytest.raises(ValueError, match="expected input"):
        network(torch.randn(2, 1, 10, 10, 10))


def _separable(n, seed, shape=(12, 10, 12)):
    rng = np.random.default_rng(seed)
    k, j, _ = np.indices(shape)
    blob = -0.15 * np.exp(-(((k - 3) / 2.0) ** 2 + ((j - 7) / 2.0) ** 2))
    labels = np.arange(n) % 2 == 0
    rng.shuffle(labels)
    maps = np.stack([(blob if y else 0.0) + rng.normal(0.0, 0.03, shape) for y in labels])
    return maps.astype(np.float32) / 0.1, labels


def test_training_on_a_separable_set_reaches_high_accuracy():
    x, y = _separable(40, seed=1)
    train, val = stratified_split(list(y), val_fraction=0.25, seed=0)
    config = TrainingConfig(epochs=25, batch_size=8, seed=0)
    trained = train_target("morphologic", x, list(y), train, val, config)

    x_test, y_test = _separable(40, seed=2)
    probs = classifier_module.predict_probabilities(trained.network, x_test)
    accuracy = np.mean((probs >= trained.threshold) == y_test)
    assert accuracy >= 0.9
    assert trained.record["n_train"] == len(train) and trained.record["n_validation"] == len(val)
    assert trained.record["validation_metrics"]["accuracy"]["estimate"] >= 0.9


def test_threshold_is_chosen_on_the_validation_set_only(monkeypatch):
    x, y = _separable(24, seed=3)
    train, val = stratified_split(list(y), val_fraction=0.25, seed=0)
    seen = {}
    original = classifier_module.choose_threshold

    def spy(probabilities, labels):
        seen["probabilities"] = np.asarray(probabilities)
        seen["labels"] = np.asarray(labels)
        return original(probabilities, labels)

    monkeypatch.setattr(classifier_module, "choose_threshold", spy)
    trained = train_target("functional", x, list(y), train, val, TrainingConfig(epochs=3))

    assert seen["probabilities"].shape == (len(val),)
    np.testing.assert_array_equal(seen["labels"], y[val])
    expected = classifier_module.predict_probabilities(trained.network, x[val])
    np.testing.assert_allclose(seen["probabilities"], expected, rtol=1e-6)
    assert trained.threshold == original(expected, y[val])["threshold"]


def test_choose_threshold_midpoint_and_one_class_fallback():
    choice = choose_threshold([0.1, 0.4, 0.6, 0.9], [0, 0, 1, 1])
    assert choice["threshold"] == pytest.approx(0.5)
    assert choose_threshold([0.2, 0.7], [1, 1])["threshold"] == 0.5


def test_stratified_split_is_disjoint_and_keeps_both_classes():
    labels = [True] * 10 + [False] * 15
    train, val = stratified_split(labels, val_fraction=0.2, seed=4)
    assert not set(train) & set(val) and sorted(train + val) == list(range(25))
    assert {labels[i] for i in val} == {True, False}
    assert len(val) == 5
    assert stratified_split(labels, val_fraction=0.2, seed=4) == (train, val)


def test_extent_comparator_threshold_comes_from_the_training_set():
    train_change = [0.1, 0.3, 2.5, 4.0, -0.2, 3.1, 0.0, 1.9]
    train_worse = [0, 0, 1, 1, 0, 1, 0, 1]
    first = extent_comparator(train_change, train_worse, [5.0, 0.0, 1.0], [1, 0, 1])
    other_test = extent_comparator(train_change, train_worse, [-3.0, 9.0], [0, 0])
    assert first["threshold_pct"] == other_test["threshold_pct"] == 1.9
    assert first["threshold_pct"] in train_change
    assert first["training_auc"] == 1.0
    assert first["test"]["confusion"] == {"tp": 1, "fp": 0, "tn": 1, "fn": 1}


# ------------------------------------------------------------------------------- model folder


def _synthetic_template(shape=(12, 10, 12)) -> LungTemplate:
    lung = _box_lung(shape)
    ct = lung.with_array(np.where(lung.array > 0, -850.0, 40.0).astype(np.float32))
    return LungTemplate(ct, lung, {"registration": {"spacing_mm": 4.0, "params": FAST}})


def _tiny_model():
    template = _synthetic_template()
    x, y = _separable(16, seed=5, shape=template.shape_kji)
    train, val = stratified_split(list(y), val_fraction=0.25, seed=0)
    config = TrainingConfig(epochs=2)
    trained = {
        t: train_target(t, x, list(y), train, val, config) for t in ("functional", "morphologic")
    }
    return build_model(template, trained, config, training={"dataset_digest": "sha256:test"})


def test_model_metadata_round_trip(tmp_path):
    model = _tiny_model()
    folder = save_model(model, tmp_path / "model")
    loaded = load_model(folder)

    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["format"] == "ild-review-worsening-model" and meta["format_version"] == 1
    assert meta["version"] == loaded.version and loaded.version.startswith("1.0.0+")
    assert set(meta["targets"]) == {"functional", "morphologic"}
    assert meta["input_spec"]["template_digest"] == model.template.digest
    assert meta["input_spec"]["shape_kji"] == list(model.template.shape_kji)
    assert meta["thresholds"] == {t: pytest.approx(model.thresholds[t]) for t in model.thresholds}
    assert meta["training"]["dataset_digest"] == "sha256:test"
    assert "validation_metrics" in meta["targets"]["functional"]
    assert meta["files"]["model.pt"].startswith("sha256:")
    x = np.random.default_rng(0).normal(size=(3, *model.template.shape_kji)).astype(np.float32)
    for target in ("functional", "morphologic"):
        np.testing.assert_allclose(
            loaded.predict_prepared(x)[target], model.predict_prepared(x)[target], rtol=1e-6
        )


def test_load_model_gives_clear_errors(tmp_path):
    folder = save_model(_tiny_model(), tmp_path / "model")

    def broken(name):
        target = tmp_path / name
        shutil.copytree(folder, target)
        return target

    with pytest.raises(WorseningModelError, match="does not exist"):
        load_model(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WorseningModelError, match=r"no metadata\.json"):
        load_model(empty)

    missing = broken("missing")
    (missing / "model.pt").unlink()
    with pytest.raises(WorseningModelError, match=r"model\.pt is missing"):
        load_model(missing)

    corrupt = broken("corrupt")
    data = bytearray((corrupt / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupt / "model.pt").write_bytes(bytes(data))
    with pytest.raises(WorseningModelError, match="SHA-256"):
        load_model(corrupt)

    garbage = broken("garbage")
    (garbage / "model.pt").write_bytes(b"garbage")
    meta = json.loads((garbage / "metadata.json").read_text())
    from inference.records import sha256_file

    meta["files"]["model.pt"] = sha256_file(garbage / "model.pt")
    (garbage / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(WorseningModelError, match="not a loadable weights file"):
        load_model(garbage)

    bad_json = broken("bad_json")
    (bad_json / "metadata.json").write_text("{not json")
    with pytest.raises(WorseningModelError, match="cannot read model metadata"):
        load_model(bad_json)

    other_template = broken("other_template")
    meta = json.loads((other_template / "metadata.json").read_text())
    meta["input_spec"]["template_digest"] = "sha256:" + "0" * 64
    (other_template / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(WorseningModelError, match="template's digest"):
        load_model(other_template)

    bad_threshold = broken("bad_threshold")
    meta = json.loads((bad_threshold / "metadata.json").read_text())
    meta["thresholds"]["morphologic"] = 1.5
    (bad_threshold / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(WorseningModelError, match=r"thresholds\.morphologic"):
        load_model(bad_threshold)


def test_input_spec_masks_clips_and_scales():
    template = _synthetic_template()
    spec = InputSpec.for_template(template, scale=0.1, clip=0.5)
    values = np.full(template.shape_kji, -2.0, dtype=np.float32)
    prepared = spec.prepare(values, template.lung.array)
    inside = template.lung.array > 0
    np.testing.assert_allclose(prepared[inside], -5.0)
    np.testing.assert_allclose(prepared[~inside], 0.0)
    with pytest.raises(ValueError, match="template grid"):
        spec.prepare(values[:-1], template.lung.array)


# ------------------------------------------------------------------- default model, prediction


@dataclass(frozen=True, eq=False)
class _Case:
    case_id: str
    morphologic_tag: str
    functional_worsening: bool
    source: object

    @property
    def morphologic_worsening(self) -> bool:
        return self.morphologic_tag == "worse"

    @property
    def extent_change_truth(self) -> float:
        return float(self.source.followup.extent_pct - self.source.baseline.extent_pct)

    def ct(self, timepoint):
        return getattr(self.source, timepoint).ct

    def lungs(self, timepoint):
        return getattr(self.source, timepoint).lungs_lr

    def exact_log_jacobian(self):
        return self.source.log_jacobian


def test_default_model_builds_once_then_loads_the_cache(pairs, tmp_path, monkeypatch):
    from inference.worsening import cohort as cohort_module
    from inference.worsening.default import DefaultModelSettings
    from inference.worsening.training import CohortTrainingSettings

    calls = []

    def tiny_cohort(*, patients, seed, shape_kji):
        calls.append((patients, seed, shape_kji))
        tags = ["worse", "stable", "improved", "worse", "stable", "stable", "worse", "stable"]
        functional = [True, False, False, True, False, True, False, False]
        return [_Case(f"P{n:03d}", tags[n], functional[n], pairs[n % 3]) for n in range(patients)]

    monkeypatch.setattr(cohort_module, "synthetic_cohort", tiny_cohort)
    settings = DefaultModelSettings(
        patients=8,
        seed=3,
        shape_kji=SHAPE,
        training=CohortTrainingSettings(
            template=TemplateSettings(spacing_mm=SPACING_MM, iterations=0, params=FAST),
            template_cases=3,
            training=TrainingConfig(epochs=2, seed=3),
        ),
    )
    cache = tmp_path / "models" / "worsening"
    model = default_model(cache, settings=settings)
    assert calls == [(8, 3, SHAPE)]
    assert (cache / "model.pt").is_file() and (cache / "template" / "metadata.json").is_file()
    assert "default_model" in model.metadata["training"]["origin"]

    again = default_model(cache, settings=settings)
    assert calls == [(8, 3, SHAPE)]  # loaded, not rebuilt
    assert again.version == model.version

    pair = pairs[0]
    prediction = predict_worsening(
        pair.baseline.ct, pair.baseline.lungs_lr, pair.log_jacobian, again
    )
    values = prediction.as_dict()
    json.dumps(values)
    assert 0.0 <= values["functional_probability"] <= 1.0
    assert 0.0 <= values["morphologic_probability"] <= 1.0
    assert values["functional_worsening"] == (
        values["functional_probability"] >= values["functional_threshold"]
    )
    assert values["model_version"] == again.version
    assert values["template_digest"] == again.template.digest
    inside = pair.baseline.lungs_lr.array > 0
    assert values["mean_log_jacobian_baseline"] == pytest.approx(
        float(pair.log_jacobian.array[inside].mean()), abs=1e-4
    )

    (cache / "model.pt").write_bytes(b"oops")
    with pytest.raises(WorseningModelError, match="SHA-256"):
        default_model(cache, settings=settings)


def test_cli_reports_bad_input(tmp_path, capsys):
    from inference.train_worsening import main as train_main
    from inference.worsening.__main__ import main as predict_main

    assert train_main(["--cohort", str(tmp_path / "none"), "--out", str(tmp_path / "m")]) == 1
    assert "no cohort.json" in capsys.readouterr().err
    assert predict_main(["--baseline", str(tmp_path / "ct.nii.gz"), "--model", str(tmp_path)]) == 1
    assert "give --log-jacobian" in capsys.readouterr().err
