"""DVC stage `tune` (also `slidemil tune`): Optuna search over the MIL hyper-parameters on validation data.

Several processes can join one study: run `python -m pipelines.tune` in each (same `tune.storage`, each with
its own SLIDEMIL_TUNE_WORKER). The study persists across `dvc repro`: each run adds `tune.n_trials` trials to
the study of the current settings (`<study_name>-<digest of metric, folds, splits, space and base settings>`).
"""

from __future__ import annotations

import sys
from dataclasses import replace

from pipelines.common import ROOT, load_params, project_path, setup_logging
from pipelines.training_inputs import training_inputs
from slidemil.data.splits import SplitConfig, make_splits
from slidemil.tracking import guard_runs, setup_tracking
from slidemil.training.config import TrainConfig
from slidemil.training.tuning import SearchSpace, TuneConfig, export_best, objective_digest, run_tuning


def main() -> int:
    log = setup_logging("tune")
    p = load_params()
    t, tr = p["tune"], p["train"]
    inputs = training_inputs(p)
    splits = make_splits(inputs.slides, SplitConfig(**tr["splits"]))
    storage = t["storage"]
    if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        storage = f"sqlite:///{project_path(storage.removeprefix('sqlite:///'))}"
    space = t["space"]
    cfg = TuneConfig(study_name=t["study_name"], storage=storage, n_trials=t["n_trials"], metric=t["metric"],
                     folds=None if t.get("folds") is None else list(t["folds"]), seed=t.get("seed", 0),
                     pruner_warmup_epochs=t["pruner_warmup_epochs"],
                     space=SearchSpace(methods=list(space["methods"]),
                                       trainer={k: tuple(v) for k, v in space.get("trainer", {}).items()},
                                       fields=dict(space.get("fields") or {})))
    base_train = TrainConfig.from_dict({**tr["trainer"], **t["trainer"]})
    # the study persists across `dvc repro` (dvc.yaml: persist); changed settings start a study of their own
    cfg = replace(cfg, study_name=f"{cfg.study_name}-{objective_digest(cfg, dict(tr['methods']), base_train, splits)}")
    guard_runs(setup_tracking(ROOT, tr["experiment"], tr.get("tracking_uri")))  # runs of killed stages end FAILED/KILLED
    study = run_tuning(inputs.slides, splits, cfg, dict(tr["methods"]), base_train, inputs.classes,
                       inputs.source, inputs.feature_dims, parallel_folds=tr.get("parallel_folds", 1))
    best = export_best(study, project_path(t["best_params"]))
    states = [tt.state.name for tt in study.trials]
    log.info("study %s: %d trials (%d pruned); best %s = %.4f with %s", cfg.study_name, len(states),
             states.count("PRUNED"), cfg.metric, best["value"], best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
