"""DVC stage `train`: patient-grouped cross-validation of every configured MIL model, tracked in MLflow."""

from __future__ import annotations

import sys

import yaml

from pipelines.common import ROOT, load_params, project_path, setup_logging
from slidemil.data.manifest import read_manifest
from slidemil.data.splits import SplitConfig, check_no_leakage, make_splits
from slidemil.store import read_feature_attrs
from slidemil.tracking import dvc_out_hash, setup_tracking
from slidemil.training.config import TrainConfig
from slidemil.training.cross_validation import CVSpec, run_cross_validation
from slidemil.utils.atomic import atomic_path, write_json_atomic


def main() -> int:
    log = setup_logging("train")
    p = load_params()
    t = p["train"]
    classes = list(p["data"]["classes"])
    feat_dir = project_path(p["features"]["out_dir"])
    slides = read_manifest(project_path(p["validate"]["manifest_out"]))
    slides["features_path"] = [str(feat_dir / f"{s}.h5") for s in slides["slide_id"]]
    attrs = read_feature_attrs(slides["features_path"].iloc[0])
    feature_dim = int(attrs["feature_dim"])

    splits = make_splits(slides, SplitConfig(**t["splits"]))
    check_no_leakage(splits)
    with atomic_path(project_path(t["splits_out"])) as tmp:
        splits.to_csv(tmp, index=False)

    setup_tracking(ROOT, t["experiment"])
    enc = p["features"]["encoder"]
    context = {
        "encoder": {"name": enc["name"], "weights": str(enc["weights"]), "seed": enc.get("seed", 0),
                    "weights_id": attrs.get("weights_id"), "feature_dim": feature_dim},
        "tiling": {k: v for k, v in p["tiling"].items() if k != "workers"},
        "tissue": dict(p["tissue"]["params"]),
        "heatmap": dict(p["heatmaps"]["render"]),
    }
    data_version = {"features_md5": dvc_out_hash(ROOT, "features") or "unknown",
                    "tiles_md5": dvc_out_hash(ROOT, "tile") or "unknown"}
    results = {}
    for name in t["models"]:
        model_type, model_cfg, trainer = name, {**t["model_config"], **t.get("model_overrides", {}).get(name, {})}, \
            dict(t["trainer"])
        if name == "tuned":  # the best Optuna trial, exported by the tune stage
            best = yaml.safe_load(project_path(p["tune"]["best_params"]).read_text())
            model_type, model_cfg = best["model"], {**model_cfg, **best["model_config"]}
            trainer.update(best["trainer"])
            log.info("tuned: %s with %s, trainer %s (trial %s)", model_type, best["model_config"], best["trainer"],
                     best["trial"])
        model_cfg.update(in_dim=feature_dim, n_classes=len(classes))
        if model_type not in ("clam_sb", "clam_mb"):
            model_cfg = {k: v for k, v in model_cfg.items() if k in ("in_dim", "n_classes", "size", "dropout")}
        spec = CVSpec(model_type, model_cfg, TrainConfig.from_dict(trainer), classes, context,
                      extra_params={"data_version": data_version["features_md5"], "encoder_weights": attrs.get("weights_id")},
                      family=name)
        res = run_cross_validation(slides[["slide_id", "label", "features_path"]], splits, spec,
                                   project_path(t["out_dir"]) / name)
        test = res.summary["test"]
        log.info("%s: test AUC %.3f +/- %.3f over %d folds (selected fold %d by validation loss)", name,
                 test["auc"]["mean"], test["auc"]["std"], test["auc"]["n"], res.best_fold)
        results[name] = {"parent_run_id": res.parent_run_id, "selected_fold": res.best_fold}
    write_json_atomic(project_path(t["out_dir"]) / "runs.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
