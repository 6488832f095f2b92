"""Cross-validated MIL training with Lightning + MLflow on synthetic bags with known signal tiles."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest

from slidemil.bundle import ModelBundle
from slidemil.data.splits import SplitConfig, make_splits
from slidemil.evaluation.calibration import CalibrationConfig, apply_temperature
from slidemil.tracking import setup_tracking
from slidemil.training.config import TrainConfig
from slidemil.training.cross_validation import CVSpec, run_cross_validation
from tests.synthetic_bags import CLASSES, DIM, bag_source, bundle_context
from tests.synthetic_bags import feature_bags as _feature_bags


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cv")
    slides = _feature_bags(root / "features")
    splits = make_splits(slides, SplitConfig(folds=2, seed=0, val_frac=0.2, test_frac=0.2))
    setup_tracking(root, "test-cv")
    spec = CVSpec(
        method="clam_sb",
        method_config={"in_dim": DIM, "n_classes": 2, "k_sample": 4},
        train=TrainConfig(lr=1e-3, max_epochs=10, min_epochs=4, patience=4, seed=0),
        class_names=CLASSES,
        bundle_context=bundle_context(),
        extra_params={"data_version": "test"},
        dataset_digest="0123456789abcdef0123456789abcdef.dir",
        calibration=CalibrationConfig(temperature_bounds=(0.25, 4.0)),
    )
    result = run_cross_validation(slides, splits, spec, bag_source(slides), root / "out")
    return root, slides, result


def test_cv_learns_and_is_tracked(trained):
    root, slides, result = trained
    assert len(result.per_fold) == 2
    # chance is 0.5; a few signal tiles in 40-80 must be found by attention
    assert result.summary["test"]["auc"]["mean"] > 0.8, result.summary
    assert result.summary["test"]["balanced_accuracy"]["mean"] > 0.8, result.summary
    client = mlflow.MlflowClient()
    parent = client.get_run(result.parent_run_id)
    assert parent.data.metrics["test_auc_mean"] == pytest.approx(result.summary["test"]["auc"]["mean"])
    assert parent.data.metrics["test_auc"] == pytest.approx(result.summary["test"]["auc"]["mean"])
    assert "test_auc_std" in parent.data.metrics
    figures = {"report/roc_test.png", "report/confusion_test.png", "report/predictions.csv"}
    [dataset] = parent.inputs.dataset_inputs
    assert dataset.dataset.digest == "0123456789abcdef0123456789abcdef.dir"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'"
    )
    assert len(children) == 2
    for child in children:
        hist = client.get_metric_history(child.info.run_id, "train_loss")
        assert len(hist) >= 4  # per-epoch losses
        assert "test_auc" in child.data.metrics
        assert set(child.data.metrics) >= {"test_auc", "val_auc", "test_balanced_accuracy"}
        assert {"bundle", "report"} <= {a.path for a in client.list_artifacts(child.info.run_id)}
        assert figures <= {a.path for a in client.list_artifacts(child.info.run_id, "report")}  # as the parent's
        assert child.inputs.dataset_inputs[0].dataset.digest == dataset.dataset.digest
        preds = mlflow.artifacts.load_text(f"runs:/{child.info.run_id}/report/predictions.csv").splitlines()
        assert {"label_name", "pred_name"} <= set(preds[0].split(","))
        assert preds[1].split(",")[preds[0].split(",").index("label_name")] in CLASSES
    report = {a.path for a in client.list_artifacts(result.parent_run_id, "report")}
    assert figures | {"report/splits.csv"} <= report
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["selection"] == "lowest validation loss" and summary["method"] == "clam_sb"
    # each fold's bundle carries the calibration fitted on its own validation slides
    for fold in (0, 1):
        cal = ModelBundle.load(root / "out" / "folds" / f"fold{fold}" / "bundle").spec.calibration
        n_val = int(((result.predictions.fold == fold) & (result.predictions.split == "val")).sum())
        assert cal.n_val == n_val > 0 and 0.25 <= cal.temperature <= 4.0 and cal.rule == "youden"
        assert cal.val_nll_after <= cal.val_nll_before + 1e-9
        assert summary["calibration"][str(fold)] == cal.model_dump()


def test_bundle_reproduces_predictions_in_fresh_process(trained):
    root, slides, result = trained
    script = textwrap.dedent(f"""
        import json, mlflow
        import pandas as pd
        from slidemil.mlflow_model import load_bundle_from_uri
        from slidemil.scoring import BundleScorer
        from tests.synthetic_bags import bag_source
        mlflow.set_tracking_uri({mlflow.get_tracking_uri()!r})
        bundle = load_bundle_from_uri("runs:/{result.parent_run_id}/model")
        slides = pd.read_csv({str(root / "slides.csv")!r})
        source, scorer = bag_source(slides), BundleScorer(bundle)
        scored = {{r.slide_id: scorer.score(source.load(r.slide_id)) for r in slides.itertuples()}}
        print(json.dumps({{"fold": bundle.metadata["fold"], "t": bundle.spec.calibration.temperature,
                          "raw": {{k: s.raw_probabilities for k, s in scored.items()}},
                          "probs": {{k: s.probabilities for k, s in scored.items()}}}}))
    """)
    slides.to_csv(root / "slides.csv", index=False)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          cwd=str(Path(__file__).resolve().parents[1]))
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["fold"] == result.best_fold
    logged = result.predictions[result.predictions.fold == result.best_fold]
    assert len(logged) > 0
    for r in logged.itertuples():
        raw = [getattr(r, f"prob_{c}") for c in CLASSES]
        calibrated = apply_temperature([raw], got["t"])[0]
        for i, c in enumerate(CLASSES):
            assert got["raw"][r.slide_id][c] == pytest.approx(raw[i], abs=1e-6)
            assert got["probs"][r.slide_id][c] == pytest.approx(calibrated[i], abs=1e-6)
