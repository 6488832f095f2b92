"""DVC stage `train`: patient-grouped cross-validation of every configured method family, tracked in MLflow."""

from __future__ import annotations

import sys

import yaml

from pipelines.common import ROOT, load_params, project_path, setup_logging
from pipelines.training_inputs import training_inputs
from slidemil.data.splits import SplitConfig, check_no_leakage, make_splits
from slidemil.evaluation.calibration import CalibrationConfig
from slidemil.methods import get_method
from slidemil.tracking import dvc_out_hash, guard_runs, setup_tracking
from slidemil.training.config import TrainConfig
from slidemil.training.cross_validation import CVSpec, run_cross_validation
from slidemil.training.run_log import global_rank
from slidemil.utils.atomic import atomic_path, write_json_atomic

#: the family that trains the best Optuna trial (data/tune/best_params.yaml)
TUNED = "tuned"


def family_setup(p: dict, family: str, log) -> tuple[str, dict, dict]:
    """(method name, params section of its config, trainer settings) of one entry of ``train.models``."""
    t = p["train"]
    trainer = dict(t["trainer"])
    if family == TUNED:
        best = yaml.safe_load(project_path(p["tune"]["best_params"]).read_text())
        method = best["method"]
        section = {**t["methods"].get(method, {}), **best["method_config"]}
        trainer.update(best["trainer"])
        log.info("tuned: %s with %s, trainer %s (trial %s)", method, best["method_config"], best["trainer"],
                 best["trial"])
        return method, section, trainer
    get_method(family)  # a readable error for a typo in train.models
    return family, dict(t["methods"].get(family, {})), trainer


def main() -> int:
    log = setup_logging("train")
    p = load_params()
    t = p["train"]
    inputs = training_inputs(p)
    splits = make_splits(inputs.slides, SplitConfig(**t["splits"]))
    check_no_leakage(splits)
    if global_rank() == 0:
        with atomic_path(project_path(t["splits_out"])) as tmp:
            splits.to_csv(tmp, index=False)
    guard_runs(setup_tracking(ROOT, t["experiment"], t.get("tracking_uri")))  # runs of killed stages end FAILED/KILLED
    data_version = {"features_md5": dvc_out_hash(ROOT, "features") or "unknown",
                    "tiles_md5": dvc_out_hash(ROOT, "tile") or "unknown"}
    results = {}
    for family in t["models"]:
        method, section, trainer = family_setup(p, family, log)
        config = get_method(method).resolve_config(section, n_classes=len(inputs.classes),
                                                   feature_dims=inputs.feature_dims)
        spec = CVSpec(method, config, TrainConfig.from_dict(trainer), inputs.classes, inputs.bundle_context,
                      extra_params={"data_version": data_version["features_md5"],
                                    "encoder_weights": inputs.feature_attrs.get("weights_id")},
                      family=family, dataset_digest=data_version["features_md5"],
                      dataset_source=str(project_path(p["features"]["out_dir"])),
                      calibration=CalibrationConfig.from_dict(p.get("calibration")))
        res = run_cross_validation(inputs.slides[["slide_id", "label"]], splits, spec, inputs.source,
                                   project_path(t["out_dir"]) / family,
                                   parallel_folds=t.get("parallel_folds", 1))
        if res is None:  # a non-zero DDP rank: rank 0 reports and writes
            continue
        test = res.summary["test"]
        log.info("%s: test AUC %.3f +/- %.3f over %d folds (selected fold %d on validation)", family,
                 test["auc"]["mean"], test["auc"]["std"], test["auc"]["n"], res.best_fold)
        results[family] = {"parent_run_id": res.parent_run_id, "selected_fold": res.best_fold, "method": method}
    if global_rank() == 0:
        write_json_atomic(project_path(t["out_dir"]) / "runs.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
