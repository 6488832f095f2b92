"""DVC stage `tune` (also `slidemil tune`): Optuna search over the MIL hyper-parameters on validation data.

Several processes can join one study: run `python -m pipelines.tune` in each (same `tune.storage`).
"""

from __future__ import annotations

import sys

from pipelines.common import ROOT, load_params, project_path, setup_logging
from slidemil.data.manifest import read_manifest
from slidemil.data.splits import SplitConfig, make_splits
from slidemil.store import read_feature_attrs
from slidemil.tracking import setup_tracking
from slidemil.training.config import TrainConfig
from slidemil.training.tuning import SearchSpace, TuneConfig, export_best, run_tuning


def main() -> int:
    log = setup_logging("tune")
    p = load_params()
    t, tr = p["tune"], p["train"]
    classes = list(p["data"]["classes"])
    feat_dir = project_path(p["features"]["out_dir"])
    slides = read_manifest(project_path(p["validate"]["manifest_out"]))
    slides["features_path"] = [str(feat_dir / f"{s}.h5") for s in slides["slide_id"]]
    feature_dim = int(read_feature_attrs(slides["features_path"].iloc[0])["feature_dim"])
    splits = make_splits(slides, SplitConfig(**tr["splits"]))
    storage = t["storage"]
    if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        storage = f"sqlite:///{project_path(storage.removeprefix('sqlite:///'))}"
    cfg = TuneConfig(study_name=t["study_name"], storage=storage, n_trials=t["n_trials"], metric=t["metric"],
                     folds=list(t["folds"]), pruner_warmup_epochs=t["pruner_warmup_epochs"],
                     space=SearchSpace(**t["space"]))
    base_model = {**tr["model_config"], "in_dim": feature_dim, "n_classes": len(classes)}
    base_train = TrainConfig.from_dict({**tr["trainer"], **t["trainer"]})
    setup_tracking(ROOT, tr["experiment"])
    study = run_tuning(slides, splits, cfg, base_model, base_train, classes)
    best = export_best(study, project_path(t["best_params"]), base_model)
    states = [tt.state.name for tt in study.trials]
    log.info("study %s: %d trials (%d pruned); best %s = %.4f with %s", cfg.study_name, len(states),
             states.count("PRUNED"), cfg.metric, best["value"], best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
