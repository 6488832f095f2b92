"""Distributed training is correct: two CPU processes (gloo) train a fold; metrics are gathered over ranks,
rank 0 alone writes the bundle and the MLflow runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from slidemil.bundle import ModelBundle
from slidemil.scoring import BundleScorer
from tests.synthetic_bags import bag_source

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ddp_fold_on_two_cpu_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "MLFLOW_ENABLE_TELEMETRY": "false"}
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MLFLOW_TRACKING_URI"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests/scripts/ddp_cv.py"), str(tmp_path), "2"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert len(results) == 1, proc.stdout  # only rank 0 reports

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("ddp")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("slidemil.kind") == "cv-parent"]
    folds = [r for r in runs if r.data.tags.get("slidemil.kind") == "cv-fold"]
    assert len(parents) == 1 and len(folds) == 1, [r.info.run_name for r in runs]  # no duplicate runs per rank
    fold = folds[0]
    assert fold.data.params["world_size"] == "2"
    for key in ("val_auc", "test_auc", "best_val_loss"):
        assert key in fold.data.metrics
    assert 0.0 <= fold.data.metrics["val_auc"] <= 1.0 and fold.data.metrics["best_val_loss"] > 0
    assert len(client.get_metric_history(fold.info.run_id, "val_loss")) >= 3  # one value per epoch, once

    bundle = ModelBundle.load(tmp_path / "out" / "bundle")
    import pandas as pd

    preds = pd.read_csv(tmp_path / "out" / "predictions.csv")
    splits = pd.read_csv(tmp_path / "out" / "report" / "splits.csv")
    assert set(preds["slide_id"]) == set(splits.loc[splits.split != "train", "slide_id"])  # every slide once
    assert not preds.duplicated(["fold", "slide_id"]).any()
    slides = pd.DataFrame({"slide_id": preds["slide_id"],
                           "features_path": [str(tmp_path / "features" / f"{s}.h5") for s in preds["slide_id"]]})
    source, scorer = bag_source(slides), BundleScorer(bundle)
    for r in preds.itertuples():  # the saved bundle is the model that made the logged predictions
        got = scorer.score(source.load(r.slide_id), explain=False).probabilities["tumour"]
        assert got == pytest.approx(r.prob_tumour, abs=1e-5)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["method"] == "abmil" and summary["selected_fold"] == 0
