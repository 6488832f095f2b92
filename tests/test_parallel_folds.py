"""Folds trained in parallel processes give exactly the sequential results and the same MLflow layout."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from slidemil.data.splits import SplitConfig, make_splits
from slidemil.tracking import setup_tracking
from slidemil.training.config import TrainConfig
from slidemil.training.cross_validation import CVSpec, run_cross_validation
from slidemil.training.parallel import resolve_parallel_folds
from tests.synthetic_bags import CLASSES, DIM, bag_source, bundle_context, feature_bags


def _run(root, slides, splits, parallel):
    spec = CVSpec(method="abmil", method_config={"in_dim": DIM, "n_classes": 2},
                  train=TrainConfig(lr=1e-3, max_epochs=5, min_epochs=2, patience=2, seed=0, accelerator="cpu"),
                  class_names=CLASSES, bundle_context=bundle_context(), family=f"abmil-p{parallel}")
    return run_cross_validation(slides, splits, spec, bag_source(slides), root / f"out{parallel}",
                                parallel_folds=parallel)


@pytest.mark.slow  # ~30-60 s: two 3-fold CVs with MLflow logging
def test_parallel_folds_equal_sequential_and_nest_under_the_parent(tmp_path):
    slides = feature_bags(tmp_path / "features", n_cases=12)
    splits = make_splits(slides, SplitConfig(folds=3, seed=0, val_frac=0.2, test_frac=0.2))
    setup_tracking(tmp_path, "test-parallel-folds")
    seq, par = _run(tmp_path, slides, splits, 1), _run(tmp_path, slides, splits, 2)
    pd.testing.assert_frame_equal(seq.per_fold, par.per_fold, check_exact=True)
    pd.testing.assert_frame_equal(seq.predictions, par.predictions, check_exact=True)
    assert seq.best_fold == par.best_fold
    from slidemil.bundle import ModelBundle

    a, b = ModelBundle.load(seq.bundle_dir), ModelBundle.load(par.bundle_dir)
    for k, v in a.state_dict.items():
        np.testing.assert_array_equal(v.numpy(), b.state_dict[k].numpy())

    client = mlflow.MlflowClient()
    for res, n_parallel in ((seq, 1), (par, 2)):
        parent = client.get_run(res.parent_run_id)
        assert parent.data.params["parallel_folds"] == str(n_parallel)
        children = client.search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{res.parent_run_id}'")
        assert sorted(c.data.tags["slidemil.fold"] for c in children) == ["0", "1", "2"]
        for child in children:
            hist = client.get_metric_history(child.info.run_id, "train_loss")
            fold = int(child.data.tags["slidemil.fold"])
            assert len(hist) == res.per_fold.set_index("fold").loc[fold, "epochs_run"]  # every epoch logged
    seq_hist = {c.data.tags["slidemil.fold"]: [m.value for m in client.get_metric_history(c.info.run_id, "val_loss")]
                for c in client.search_runs([parent.info.experiment_id],
                                            filter_string=f"tags.mlflow.parentRunId = '{seq.parent_run_id}'")}
    par_hist = {c.data.tags["slidemil.fold"]: [m.value for m in client.get_metric_history(c.info.run_id, "val_loss")]
                for c in children}
    assert seq_hist == par_hist


def test_resolve_parallel_folds(monkeypatch):
    cfg = TrainConfig(accelerator="cpu", num_threads=1)
    monkeypatch.setattr("slidemil.training.parallel.available_cores", lambda: 4)
    assert resolve_parallel_folds("auto", cfg, 5) == 4
    assert resolve_parallel_folds("auto", cfg, 3) == 3
    assert resolve_parallel_folds("auto", TrainConfig(accelerator="cpu", num_threads=2), 5) == 2
    assert resolve_parallel_folds(8, cfg, 5) == 5 and resolve_parallel_folds(1, cfg, 5) == 1
    assert resolve_parallel_folds("auto", TrainConfig(accelerator="cpu", strategy="ddp", devices=2), 5) == 1
    monkeypatch.setenv("RANK", "0")
    assert resolve_parallel_folds("auto", cfg, 5) == 1  # launched by torchrun: DDP owns the processes
    with pytest.raises(ValueError, match="parallel_folds"):
        monkeypatch.delenv("RANK")
        resolve_parallel_folds(0, cfg, 5)
