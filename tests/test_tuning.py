"""Optuna tuning on validation data: nested MLflow runs, exported best params, two workers on one study."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from slidemil.data.splits import SplitConfig, make_splits
from slidemil.tracking import setup_tracking
from slidemil.training.config import TrainConfig
from slidemil.training.tuning import SearchSpace, TuneConfig, export_best, objective_digest, run_tuning
from tests.synthetic_bags import CLASSES, DIM, bag_source, feature_bags

CLAM = {"size": "small", "dropout": 0.25, "k_sample": 4, "subtyping": False}
SECTIONS = {"clam_sb": CLAM, "abmil": {"size": "small", "dropout": 0.25}}
DIMS = {"tiles": DIM}
BASE_TRAIN = TrainConfig(max_epochs=6, min_epochs=2, patience=3)


def _cfg(root: Path, n_trials: int) -> TuneConfig:
    return TuneConfig(study_name="t", storage=f"sqlite:///{root / 'optuna.db'}", n_trials=n_trials,
                      pruner_warmup_epochs=1, space=SearchSpace(methods=["clam_sb", "abmil"], fields={"k_sample": [2, 6]}))


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    slides = feature_bags(root / "features", n_cases=16)
    splits = make_splits(slides, SplitConfig(folds=1, val_frac=0.2, test_frac=0.2))
    slides.to_csv(root / "slides.csv", index=False)
    splits.to_csv(root / "splits.csv", index=False)
    return root, slides, splits


def test_tuning_tracks_trials_and_exports_best(bags):
    root, slides, splits = bags
    setup_tracking(root, "tune-test")
    study = run_tuning(slides, splits, _cfg(root, 4), SECTIONS, BASE_TRAIN, CLASSES, bag_source(slides), DIMS)
    assert len(study.trials) == 4
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == 4
    # validation only: the objective is val_loss; the test split is never read
    best = export_best(study, root / "best.yaml")
    saved = yaml.safe_load((root / "best.yaml").read_text())
    assert saved == best and saved["method"] in ("clam_sb", "abmil")
    # each method's own search space: CLAM's fields never reach ABMIL
    for trial in study.trials:
        has_clam_fields = {"k_sample", "bag_weight"} <= set(trial.params)
        assert has_clam_fields == (trial.params["method"] == "clam_sb"), trial.params
        if "k_sample" in trial.params:
            assert 2 <= trial.params["k_sample"] <= 6
    assert saved["trainer"]["lr"] == pytest.approx(study.best_params["lr"])
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("tune-test")
    trials = client.search_runs([exp.experiment_id], "tags.`slidemil.kind` = 'tune-trial'")
    assert len(trials) == 4
    parent = client.search_runs([exp.experiment_id], "tags.`slidemil.kind` = 'tune'")[0]
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "optimization_history.png" in names


def test_two_worker_processes_share_one_study(bags):
    root, _, _ = bags
    storage = root / "shared.db"
    script = textwrap.dedent(f"""
        import pandas as pd
        from pathlib import Path
        from slidemil.tracking import setup_tracking
        from slidemil.training.tuning import run_tuning
        from tests.synthetic_bags import bag_source
        from tests.test_tuning import BASE_TRAIN, CLASSES, DIMS, SECTIONS, _cfg
        from dataclasses import replace
        root = Path({str(root)!r})
        setup_tracking(root, "tune-shared")
        cfg = replace(_cfg(root, 3), storage="sqlite:///{storage}", study_name="shared")
        slides = pd.read_csv(root / "slides.csv")
        run_tuning(slides, pd.read_csv(root / "splits.csv"), cfg, SECTIONS, BASE_TRAIN, CLASSES,
                   bag_source(slides), DIMS)
    """)
    env_root = str(Path(__file__).resolve().parents[1])
    # create the study (and the mlflow db) once so two fresh processes do not race on schema creation
    optuna.create_study(study_name="shared", storage=f"sqlite:///{storage}", direction="minimize")
    setup_tracking(root, "tune-shared")
    import os

    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=env_root,
                              env={**os.environ, "SLIDEMIL_TUNE_WORKER": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{storage}")
    assert len(study.trials) == 6
    assert len({t.number for t in study.trials}) == 6
    # differently seeded workers: no two trials draw the same settings
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 6


def test_one_worker_reproduces_its_trials(bags, monkeypatch):
    """The sampler is seeded (seed + worker): the same study settings give the same trials, so the tuned
    family of `dvc repro` is reproducible."""
    root, slides, splits = bags
    monkeypatch.delenv("SLIDEMIL_TUNE_WORKER", raising=False)
    setup_tracking(root, "tune-repro")
    runs = []
    for name in ("a", "b"):
        cfg = TuneConfig(study_name=f"repro-{name}", storage=f"sqlite:///{root / f'repro_{name}.db'}", n_trials=2,
                         space=SearchSpace(methods=["clam_sb", "abmil"]))
        study = run_tuning(slides, splits, cfg, SECTIONS, TrainConfig(max_epochs=2, min_epochs=1, patience=1),
                           CLASSES, bag_source(slides), DIMS)
        runs.append([(t.params, t.value) for t in study.trials])
    assert runs[0] == runs[1]


def test_objective_is_the_mean_over_validation_folds_and_the_study_persists(bags, tmp_path, monkeypatch):
    """A trial's value is the mean of every fold's validation metric; a second run on the same storage joins
    the study and adds new trials (the sampler seed counts the trials already there)."""
    _, slides, _ = bags
    monkeypatch.delenv("SLIDEMIL_TUNE_WORKER", raising=False)
    splits = make_splits(slides, SplitConfig(folds=2, val_frac=0.2, test_frac=0.2))
    setup_tracking(tmp_path, "tune-folds")
    cfg = TuneConfig(study_name="folds", storage=f"sqlite:///{tmp_path / 'optuna.db'}", n_trials=2,
                     space=SearchSpace(methods=["abmil"]))
    train = TrainConfig(max_epochs=2, min_epochs=1, patience=1)
    study = run_tuning(slides, splits, cfg, SECTIONS, train, CLASSES, bag_source(slides), DIMS)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("tune-folds")
    for trial in study.trials:
        [run] = client.search_runs([exp.experiment_id], f"tags.`optuna.trial` = '{trial.number}'")
        per_fold = [m.value for m in client.get_metric_history(run.info.run_id, "fold_val_loss")]
        assert len(per_fold) == 2 and trial.value == pytest.approx(sum(per_fold) / 2)
    again = run_tuning(slides, splits, replace(cfg, n_trials=1), SECTIONS, train, CLASSES, bag_source(slides), DIMS)
    assert len(again.trials) == 3
    assert again.trials[2].params not in [t.params for t in again.trials[:2]]
    digest = objective_digest(cfg, SECTIONS, train, splits)
    assert digest == objective_digest(cfg, SECTIONS, train, splits)
    assert digest != objective_digest(replace(cfg, metric="val_auc"), SECTIONS, train, splits)
    assert digest != objective_digest(cfg, SECTIONS, train, make_splits(slides, SplitConfig(folds=2, seed=1)))


def test_folds_of_a_trial_in_parallel_processes_give_the_same_study(bags, tmp_path, monkeypatch):
    """Two forked fold processes per trial: every trial's value, its per-fold values and the best trial are those
    of the sequential run (same seeds, one torch thread per fold either way)."""
    _, slides, _ = bags
    monkeypatch.delenv("SLIDEMIL_TUNE_WORKER", raising=False)
    splits = make_splits(slides, SplitConfig(folds=3, val_frac=0.2, test_frac=0.2))
    train = TrainConfig(max_epochs=2, min_epochs=1, patience=1, num_threads=1)
    values = {}
    for mode in (1, 2):
        setup_tracking(tmp_path / str(mode), f"tune-par{mode}")
        cfg = TuneConfig(study_name=f"par{mode}", storage=f"sqlite:///{tmp_path / f'{mode}.db'}", n_trials=3,
                         space=SearchSpace(methods=["abmil"]))
        study = run_tuning(slides, splits, cfg, SECTIONS, train, CLASSES, bag_source(slides), DIMS,
                           parallel_folds=mode)
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(f"tune-par{mode}")
        per_fold = []
        for trial in study.trials:
            [run] = client.search_runs([exp.experiment_id], f"tags.`optuna.trial` = '{trial.number}'")
            per_fold.append([m.value for m in client.get_metric_history(run.info.run_id, "fold_val_loss")])
            assert client.get_metric_history(run.info.run_id, "val_loss")  # per-epoch curves logged either way
        values[mode] = ([t.value for t in study.trials], per_fold, study.best_trial.number)
        mlflow.set_tracking_uri(None)
    assert values[1] == values[2]
    assert all(len(f) == 3 for f in values[1][1])
