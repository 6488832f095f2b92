"""DVC stage `evaluate`: metrics.json (mean and std per metric and model) and ROC curves for `dvc plots`."""

from __future__ import annotations

import json
import sys

import pandas as pd

from pipelines.common import load_params, project_path, setup_logging
from slidemil.evaluation.metrics import roc_points
from slidemil.utils.atomic import atomic_path, write_json_atomic


def main() -> int:
    log = setup_logging("evaluate")
    p = load_params()
    classes = list(p["data"]["classes"])
    train_dir = project_path(p["train"]["out_dir"])
    ev = p["evaluate"]
    metrics, roc_dir = {}, project_path(ev["roc_dir"])
    roc_dir.mkdir(parents=True, exist_ok=True)
    for name in p["train"]["models"]:
        summary = json.loads((train_dir / name / "summary.json").read_text())
        metrics[name] = {
            f"{split}_{m}": {"mean": _round4(v["mean"]), "std": _round4(v["std"])}
            for split in ("test", "val") for m, v in summary["summary"][split].items()
        }
        metrics[name]["n_folds"] = len(summary["per_fold"])
        preds = pd.read_csv(train_dir / name / "predictions.csv")
        test = preds[preds.split == "test"]
        probs = test[[f"prob_{c}" for c in classes]].to_numpy()
        roc = roc_points(test["label"].to_numpy(), probs, classes)  # pooled over folds, one curve per class
        with atomic_path(roc_dir / f"{name}.csv") as tmp:
            roc.to_csv(tmp, index=False)
        log.info("%s: test AUC %s +/- %s", name, metrics[name]["test_auc"]["mean"], metrics[name]["test_auc"]["std"])
    baseline = ev.get("baseline")
    if baseline in metrics:
        for name in metrics:
            auc, base = metrics[name]["test_auc"]["mean"], metrics[baseline]["test_auc"]["mean"]
            if name != baseline and auc is not None and base is not None:
                metrics[name]["test_auc_gain_over_" + baseline] = round(auc - base, 4)
    write_json_atomic(project_path(ev["metrics"]), metrics)
    return 0


def _round4(value: float | None) -> float | None:
    """summary.json holds null where no fold had the metric (strict JSON has no NaN)."""
    return None if value is None else round(value, 4)


if __name__ == "__main__":
    sys.exit(main())
