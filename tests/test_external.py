"""External validation: the class refusal, the reference parser, cohort metrics and the report; the External
dashboard page on a cohort folder written by the same functions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from slidemil.bundle import CalibrationSpec
from slidemil.evaluation.calibration import plot_reliability, reliability_table
from slidemil.external import (
    CohortError,
    ExternalConfig,
    ModelRef,
    check_cohort_classes,
    cohort_metrics,
    flat_metrics,
    render_report,
    validate_cohort,
)
from slidemil.utils.atomic import write_json_atomic
from tests.test_dashboard import _app, _frames, _texts

CLASSES = ["normal", "subtype_a", "subtype_b"]


def test_model_reference():
    assert ModelRef.parse("slidemil-demo@champion").uri == "models:/slidemil-demo@champion"
    assert ModelRef.parse("slidemil-demo/3").uri == "models:/slidemil-demo/3"
    with pytest.raises(ValueError, match="NAME@ALIAS"):
        ModelRef.parse("slidemil-demo")


def test_cohort_with_unknown_classes_is_refused(tmp_path):
    with pytest.raises(CohortError, match=r"classes \['lymphoma'\] that model m@champion does not know "
                                          r"\(its classes: \['normal', 'subtype_a', 'subtype_b'\]\)"):
        check_cohort_classes(pd.Series(["normal", "lymphoma"]), CLASSES, "site2", "m@champion")
    # the same refusal before the suite runs (no slide is opened)
    df = pd.DataFrame({"slide_id": ["a"], "case_id": ["c"], "path": ["a.svs"], "label": ["lymphoma"],
                       "abs_path": [str(tmp_path / "a.svs")]})
    with pytest.raises(CohortError, match="does not know"):
        validate_cohort(df, CLASSES, "site2", "m@champion", tmp_path)
    assert not (tmp_path / "validation.json").exists()


def test_cohort_that_fails_the_suite_is_refused(tmp_path):
    df = pd.DataFrame({"slide_id": ["a"], "case_id": ["c"], "path": ["a.svs"], "label": ["normal"],
                       "abs_path": [str(tmp_path / "a.svs")]})
    with pytest.raises(CohortError, match="failed validation"):
        validate_cohort(df, CLASSES, "site2", "m@champion", tmp_path)
    assert (tmp_path / "validation.json").exists()


def _cohort(seed: int = 0, n: int = 12):
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1, 2], n // 3)
    logits = rng.normal(0, 1, (n, 3)) + 3.0 * np.eye(3)[y]
    logits[0] = [0.0, 6.0, 0.0]  # slide 0 (normal) confidently wrong
    raw = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    cases = np.repeat([f"ext_{i:03d}" for i in range(n // 2)], 2)
    return y, raw, cases


def test_cohort_metrics_and_report():
    y, raw, cases = _cohort()
    cal = CalibrationSpec(temperature=2.0, threshold=0.5, rule="youden", negative_class="normal")
    m = cohort_metrics(y, raw, cases, cal, CLASSES, ExternalConfig(n_boot=200))
    assert m["auc"]["unit"] == "case" and m["auc"]["n_units"] == 6
    assert m["auc"]["low"] <= m["auc"]["estimate"] <= m["auc"]["high"]
    assert m["temperature"] == 2.0 and m["ece"] != m["ece_calibrated"]
    op = m["operating_point"]
    assert (op["n_positive"], op["n_negative"]) == (8, 4)
    assert op["specificity"] == 0.75  # the confidently wrong normal slide is called disease
    assert m["class_counts"] == {"normal": 4, "subtype_a": 4, "subtype_b": 4}
    flat = flat_metrics(m)
    assert flat["external_auc_ci_low"] == m["auc"]["low"] and flat["external_specificity"] == 0.75
    preds = _predictions(y, raw, cases)
    text = render_report({**m, "cohort": "site2", "model": "m@champion (v1)", "manifest": "x.csv",
                          "stain_normalisation": "none", "bundle_fold": 1}, preds, CLASSES)
    assert "| AUC (one-vs-rest macro) |" in text and "Stain normalisation: **none**" in text
    worst_row = [line for line in text.splitlines() if line.startswith("| ext_s0 ")]
    assert worst_row and "| normal | subtype_a |" in worst_row[0]


def _predictions(y, raw, cases) -> pd.DataFrame:
    return pd.DataFrame({"slide_id": [f"ext_s{i}" for i in range(len(y))], "case_id": cases,
                         "label": [CLASSES[i] for i in y], "pred": [CLASSES[i] for i in raw.argmax(1)],
                         "true_prob": raw[np.arange(len(y)), y]})


def test_external_page(tmp_path, monkeypatch):
    y, raw, cases = _cohort()
    m = cohort_metrics(y, raw, cases, CalibrationSpec(), CLASSES, ExternalConfig(n_boot=100))
    folder = tmp_path / "data" / "external" / "site2"
    folder.mkdir(parents=True)
    write_json_atomic(folder / "metrics.json", {**m, "cohort": "site2", "model": "m@champion (v1)",
                                                "manifest": "x.csv", "stain_normalisation": "none"})
    _predictions(y, raw, cases).to_csv(folder / "predictions.csv", index=False)
    plot_reliability({"raw": reliability_table(y, raw)}, folder / "reliability.png", "site2")

    empty = _app(tmp_path / "nothing", monkeypatch, "external")
    assert any("No external validation yet" in i.value for i in empty.info)

    at = _app(tmp_path, monkeypatch, "external")
    assert at.selectbox(key="external_cohort").value == "site2"
    table = _frames(at)[0]
    auc = m["auc"]
    assert table.iloc[0, 1] == f"{auc['estimate']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]"
    worst = _frames(at)[1]
    assert worst.iloc[0]["slide_id"] == "ext_s0"
    assert "stain normalisation: none" in _texts(at)
    assert any("No heatmap for ext_s0" in i.value for i in at.info)


@pytest.fixture(scope="module")
def tiny_bundle():
    import torch

    from slidemil.bundle import ModelBundle
    from slidemil.encoders.registry import build_encoder

    enc = build_encoder("resnet18", "random", seed=0)
    torch.manual_seed(0)
    encoder = {"name": "resnet18", "weights": "random", "seed": 0, "weights_id": enc.weights_id,
               "feature_dim": enc.feature_dim}
    tiling = {"tile_px": 224, "target_mpp": 1.0, "stride_px": None, "min_tissue": 0.5, "multiscale_factor": 0}
    bundle = ModelBundle.create("abmil", {"in_dim": enc.feature_dim, "n_classes": 3}, CLASSES, encoder, tiling,
                                heatmap={"canvas_max_side": 512})
    bundle.spec.calibration = CalibrationSpec(temperature=1.5, threshold=0.6, rule="youden", negative_class="normal")
    return bundle


@pytest.mark.slow  # ~35 s on the shared CPUs: two passes of three slides through tiling, resnet18 and heatmaps
def test_evaluate_external_end_to_end_with_and_without_stain_normalisation(small_demo, tiny_bundle, tmp_path):
    """From pixels: the suite, the one scoring path, every output; normalisation recorded in the bundle changes
    the encoded tiles (so the probabilities) and the report says it was used."""
    from slidemil.external import evaluate_external, with_stain_normalisation
    from slidemil.features.stain_norm import StainNormalisation
    from slidemil.stains import StainConfig, reference_matrix

    manifest = pd.read_csv(small_demo / "manifest.csv")
    sub = manifest.groupby("label").head(1)  # one slide per class
    sub.to_csv(small_demo / "external.csv", index=False)
    cfg = ExternalConfig(n_boot=50, top_k=1, device="cpu")
    plain = evaluate_external(tiny_bundle, small_demo / "external.csv", tmp_path / "plain", model="toy@x",
                              cohort="site2", cfg=cfg)
    for rel in ("metrics.json", "predictions.csv", "report.md", "reliability.png", "validation.json"):
        assert (tmp_path / "plain" / rel).exists(), rel
    assert len(list((tmp_path / "plain" / "heatmaps").glob("*.png"))) == 3
    assert plain["n_slides"] == 3 and plain["stain_normalisation"] == "none" and plain["temperature"] == 1.5
    preds = pd.read_csv(tmp_path / "plain" / "predictions.csv")
    stamps = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "plain" / "slides").glob("*.json")}
    assert len(stamps) == 3
    again = evaluate_external(tiny_bundle, small_demo / "external.csv", tmp_path / "plain", model="toy@x",
                              cohort="site2", cfg=cfg)  # resumed: every slide's result is current
    assert again == plain
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "plain" / "slides").glob("*.json")} == stamps
    assert not np.allclose(preds[[f"prob_{c}" for c in CLASSES]], preds[[f"raw_prob_{c}" for c in CLASSES]])

    norm = StainNormalisation(reference_matrix(), StainConfig(), "the reference")
    assert StainNormalisation.from_component(norm.to_component()).target.to_dict() == reference_matrix().to_dict()
    normed = evaluate_external(with_stain_normalisation(tiny_bundle, norm), small_demo / "external.csv",
                               tmp_path / "norm", model="toy@x", cohort="site2", cfg=cfg)
    assert normed["stain_normalisation"] == "macenko to the reference"
    assert "Stain normalisation: **macenko to the reference**" in (tmp_path / "norm" / "report.md").read_text()
    normed_preds = pd.read_csv(tmp_path / "norm" / "predictions.csv")
    assert (normed_preds["n_tiles"] == preds["n_tiles"]).all()
    assert not np.allclose(normed_preds["raw_prob_normal"], preds["raw_prob_normal"], atol=1e-6)


def test_evaluate_external_refuses_unknown_classes_before_scoring(small_demo, tiny_bundle, tmp_path):
    from slidemil.external import evaluate_external

    manifest = pd.read_csv(small_demo / "manifest.csv").head(2).assign(label=["normal", "lymphoma"])
    manifest.to_csv(small_demo / "bad.csv", index=False)
    with pytest.raises(CohortError, match=r"cohort 'site3' has classes \['lymphoma'\] that model toy@x does not "
                                          "know"):
        evaluate_external(tiny_bundle, small_demo / "bad.csv", tmp_path / "bad", model="toy@x", cohort="site3")
    assert not (tmp_path / "bad" / "predictions.csv").exists()


@pytest.mark.slow  # a fresh sqlite MLflow store and a logged pyfunc: ~70 s on the shared CPUs
def test_external_run_is_linked_to_the_model_version(tmp_path):
    """The run's metrics are logged against the version's logged model (what MLflow 3's version page lists) and
    the version is tagged with the cohort's AUC and the run id; load_model resolves NAME@ALIAS."""
    import mlflow
    import torch

    from slidemil.bundle import ModelBundle
    from slidemil.external import load_model, log_external_run, logged_model_id
    from slidemil.mlflow_model import log_bundle
    from slidemil.registry import register_and_promote
    from slidemil.tracking import setup_tracking

    setup_tracking(tmp_path, "external-test")
    torch.manual_seed(0)
    folder = ModelBundle.create("abmil", {"in_dim": 8, "n_classes": 3}, CLASSES, {"name": "toy", "feature_dim": 8},
                                {"tile_px": 224}).save(tmp_path / "b")
    with mlflow.start_run() as run:
        info = log_bundle(folder)
    register_and_promote(info.model_uri, "ext-model", "val_auc_mean", 0.9, run_id=run.info.run_id)
    bundle, mv = load_model(ModelRef.parse("ext-model@champion"))
    assert bundle.class_names == CLASSES and logged_model_id(mv) == info.model_id

    y, raw, cases = _cohort()
    m = {**cohort_metrics(y, raw, cases, CalibrationSpec(), CLASSES, ExternalConfig(n_boot=50)),
         "manifest": "x.csv", "stain_normalisation": "none"}
    out = tmp_path / "out"
    out.mkdir()
    _predictions(y, raw, cases).to_csv(out / "predictions.csv", index=False)
    run_id = log_external_run(m, out, mv, "site2", "external-runs")
    linked = {x.key: (x.value, x.dataset_name) for x in mlflow.get_logged_model(info.model_id).metrics}
    assert linked["external_auc"] == (m["auc"]["estimate"], "site2")
    assert linked["external_auc_ci_low"][0] == m["auc"]["low"]
    tags = mlflow.MlflowClient().get_model_version("ext-model", mv.version).tags
    assert tags["slidemil.external.site2.run_id"] == run_id and tags["slidemil.external.site2"].startswith("AUC ")
    assert mlflow.get_run(run_id).data.tags["slidemil.kind"] == "external"
    with pytest.raises(LookupError, match="dvc repro promote"):
        load_model(ModelRef.parse("ext-model@nope"))


def test_cli_evaluate_names_a_bad_model_reference(capsys, tmp_path):
    from slidemil.cli import main

    assert main(["evaluate", "--model", "slidemil-demo", "--manifest", "m.csv", "--out", str(tmp_path)]) == 2
    assert "expected NAME@ALIAS" in capsys.readouterr().err
