"""DVC stage `evaluate`: the metrics of every model family, for people and for `dvc plots` / `dvc metrics`.

Outputs (paths in params.yaml ``evaluate``):

- ``metrics``: the full table, mean and std of every metric per family (promotion and the dashboard read it);
- ``headline_dir``: one small JSON file per headline metric with one number per family, the only DVC metrics
  of the pipeline, so ``dvc metrics show`` is a narrow table (a row per metric, a column per family);
- ``roc``: test ROC curves pooled over folds, long format ``model, curve, step, fpr, tpr`` (the
  micro-average and one curve per class), drawn by ``.dvc/plots/roc.json`` with one colour per model;
- ``roc_dir/<model>.csv``: the per-class curves of one family (``class, fpr, tpr``, for the dashboard);
- ``confusion_dir/<model>.csv``: one row per pooled test prediction (``actual, predicted`` class names),
  for DVC's confusion template.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from pipelines.common import load_params, project_path, setup_logging
from slidemil.evaluation.metrics import roc_points, roc_table
from slidemil.utils.atomic import atomic_path, write_json_atomic

#: headline file name -> (split, metric, statistic): what `dvc metrics show` prints, one row each
HEADLINE = {
    "test_auc": ("test", "auc", "mean"),
    "test_auc_sd": ("test", "auc", "std"),
    "test_bal_acc": ("test", "balanced_accuracy", "mean"),
    "val_auc": ("val", "auc", "mean"),
}


def main() -> int:
    log = setup_logging("evaluate")
    p = load_params()
    ev = p["evaluate"]
    out = evaluate(project_path(p["train"]["out_dir"]), list(p["train"]["models"]), list(p["data"]["classes"]),
                   ev.get("baseline"), {k: project_path(ev[k]) for k in
                                        ("metrics", "headline_dir", "roc", "roc_dir", "confusion_dir")})
    for name, m in out.items():
        log.info("%s: test AUC %s +/- %s", name, m["test_auc"]["mean"], m["test_auc"]["std"])
    return 0


def evaluate(train_dir: Path, models: list[str], classes: list[str], baseline: str | None,
             paths: dict[str, Path]) -> dict:
    """Read each family's ``summary.json`` and ``predictions.csv`` under ``train_dir``; write every output."""
    metrics, curves = {}, []
    for key in ("roc_dir", "confusion_dir", "headline_dir"):
        paths[key].mkdir(parents=True, exist_ok=True)
    for name in models:
        summary = json.loads((train_dir / name / "summary.json").read_text())
        metrics[name] = {
            f"{split}_{m}": {"mean": _round4(v["mean"]), "std": _round4(v["std"])}
            for split in ("test", "val") for m, v in summary["summary"][split].items()
        }
        metrics[name]["n_folds"] = len(summary["per_fold"])
        test = pd.read_csv(train_dir / name / "predictions.csv").query("split == 'test'")
        labels, probs = test["label"].to_numpy(), test[[f"prob_{c}" for c in classes]].to_numpy()
        with atomic_path(paths["roc_dir"] / f"{name}.csv") as tmp:
            roc_points(labels, probs, classes).to_csv(tmp, index=False)  # pooled over folds, one curve per class
        curves.append(roc_table(name, labels, probs, classes))
        with atomic_path(paths["confusion_dir"] / f"{name}.csv") as tmp:
            pd.DataFrame({"actual": [classes[i] for i in labels],
                          "predicted": [classes[i] for i in probs.argmax(1)]}).to_csv(tmp, index=False)
    if baseline in metrics:
        for name in metrics:
            auc, base = metrics[name]["test_auc"]["mean"], metrics[baseline]["test_auc"]["mean"]
            if name != baseline and auc is not None and base is not None:
                metrics[name]["test_auc_gain_over_" + baseline] = round(auc - base, 4)
    with atomic_path(paths["roc"]) as tmp:
        pd.concat(curves, ignore_index=True).to_csv(tmp, index=False, float_format="%.6g")
    write_json_atomic(paths["metrics"], metrics)
    for file, (split, metric, stat) in HEADLINE.items():
        write_json_atomic(paths["headline_dir"] / f"{file}.json",
                          {name: _round3(m.get(f"{split}_{metric}", {}).get(stat)) for name, m in metrics.items()})
    return metrics


def _round4(value: float | None) -> float | None:
    """summary.json holds null where no fold had the metric (strict JSON has no NaN)."""
    return None if value is None else round(value, 4)


def _round3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


if __name__ == "__main__":
    sys.exit(main())
