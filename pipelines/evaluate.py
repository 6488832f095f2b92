"""DVC stage `evaluate`: the metrics of every model family, for people and for `dvc plots` / `dvc metrics`.

Outputs (paths in params.yaml ``evaluate``):

- ``metrics``: the full table, mean and std of every metric per family (promotion and the dashboard read it);
- ``headline_dir``: one small JSON file per headline metric with one number per family, the only DVC metrics
  of the pipeline, so ``dvc metrics show`` is a narrow table (a row per metric, a column per family);
- ``roc``: test ROC curves pooled over folds, long format ``model, curve, step, fpr, tpr`` (the
  micro-average and one curve per class), drawn by ``.dvc/plots/roc.json`` with one colour per model;
- ``roc_dir/<model>.csv``: the per-class curves of one family (``class, fpr, tpr``, for the dashboard);
- ``confusion_dir/<model>.csv``: one row per pooled test prediction (``actual, predicted`` class names),
  for DVC's confusion template;
- ``calibration_dir/<model>/reliability.{png,csv}``: the reliability diagram of the pooled test folds.

Per family ``metrics`` also holds ``pooled_test``: the test folds' predictions pooled, with bootstrap 95% intervals
(over patients when a patient has several slides) for AUC, balanced accuracy and macro F1, the ECE before and after
each fold's temperature (fitted on that fold's validation slides), and sensitivity / specificity at each fold's
validation operating point.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from pipelines.common import load_params, project_path, setup_logging
from slidemil.evaluation.calibration import (
    CalibrationConfig,
    apply_temperature,
    expected_calibration_error,
    plot_reliability,
    reliability_table,
    sensitivity_specificity,
)
from slidemil.evaluation.metrics import roc_points, roc_table
from slidemil.evaluation.uncertainty import bootstrap_cis
from slidemil.utils.atomic import atomic_path, write_json_atomic

#: headline file name -> key path into a family's metrics: what `dvc metrics show` prints, one row each
HEADLINE = {
    "test_auc": ("test_auc", "mean"),
    "test_auc_sd": ("test_auc", "std"),
    "test_auc_ci_low": ("pooled_test", "auc", "low"),  # pooled test folds, bootstrap 95% interval
    "test_auc_ci_high": ("pooled_test", "auc", "high"),
    "test_bal_acc": ("test_balanced_accuracy", "mean"),
    "test_ece": ("pooled_test", "ece_calibrated"),
    "val_auc": ("val_auc", "mean"),
}


def main() -> int:
    log = setup_logging("evaluate")
    p = load_params()
    ev = p["evaluate"]
    classes = list(p["data"]["classes"])
    cases = pd.read_csv(project_path(p["validate"]["manifest_out"])).set_index("slide_id")["case_id"].astype(str)
    cal_dir = project_path(ev["calibration_dir"])

    def pooled(name: str, test: pd.DataFrame, summary: dict) -> dict:
        return pooled_test_metrics(test, classes, cases, summary.get("calibration", {}), p, cal_dir / name)

    out = evaluate(project_path(p["train"]["out_dir"]), list(p["train"]["models"]), classes,
                   ev.get("baseline"), {k: project_path(ev[k]) for k in
                                        ("metrics", "headline_dir", "roc", "roc_dir", "confusion_dir")}, pooled)
    for name, m in out.items():
        q = m.get("pooled_test", {})
        log.info("%s: test AUC %s +/- %s; pooled %s [%s, %s], ECE %s -> %s", name, m["test_auc"]["mean"],
                 m["test_auc"]["std"], q.get("auc", {}).get("estimate"), q.get("auc", {}).get("low"),
                 q.get("auc", {}).get("high"), q.get("ece"), q.get("ece_calibrated"))
    return 0


def evaluate(train_dir: Path, models: list[str], classes: list[str], baseline: str | None,
             paths: dict[str, Path], pooled: Callable[[str, pd.DataFrame, dict], dict] | None = None) -> dict:
    """Read each family's ``summary.json`` and ``predictions.csv`` under ``train_dir``; write every output.
    ``pooled(name, test predictions, summary)`` adds the family's ``pooled_test`` entry (CIs, calibration)."""
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
        if pooled is not None:
            metrics[name]["pooled_test"] = pooled(name, test, summary)
    if baseline in metrics:
        for name in metrics:
            auc, base = metrics[name]["test_auc"]["mean"], metrics[baseline]["test_auc"]["mean"]
            if name != baseline and auc is not None and base is not None:
                metrics[name]["test_auc_gain_over_" + baseline] = round(auc - base, 4)
    with atomic_path(paths["roc"]) as tmp:
        pd.concat(curves, ignore_index=True).to_csv(tmp, index=False, float_format="%.6g")
    write_json_atomic(paths["metrics"], metrics)
    for file, keys in HEADLINE.items():
        write_json_atomic(paths["headline_dir"] / f"{file}.json",
                          {name: _round3(_get(m, keys)) for name, m in metrics.items()})
    return metrics


def _get(tree: dict, keys: tuple[str, ...]) -> float | None:
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree if isinstance(tree, (int, float)) else None


def pooled_test_metrics(test: pd.DataFrame, classes: list[str], cases: pd.Series, calibration: dict, p: dict,
                        out_dir) -> dict:
    """CIs, ECE raw / calibrated and the operating point on the pooled test folds (each fold calibrated and
    thresholded with what its own validation slides gave); the reliability diagram and its table in ``out_dir``."""
    u, cal = p["uncertainty"], CalibrationConfig.from_dict(p.get("calibration"))
    y = test["label"].to_numpy()
    raw = test[[f"prob_{c}" for c in classes]].to_numpy()
    calibrated, called = raw.copy(), []
    neg = cal.negative_index(classes)
    for fold, idx in test.groupby("fold").indices.items():
        fc = calibration.get(str(fold), {})
        calibrated[idx] = apply_temperature(raw[idx], float(fc.get("temperature", 1.0)))
        threshold = fc.get("threshold")
        ss = sensitivity_specificity(y[idx], calibrated[idx], 0.5 if threshold is None else float(threshold), neg)
        called.append((ss["sensitivity"], ss["n_positive"], ss["specificity"], ss["n_negative"]))
    cis = bootstrap_cis(y, raw, case_ids=cases.reindex(test["slide_id"]).to_numpy(), n_boot=int(u["n_boot"]),
                        level=float(u["level"]), seed=int(u["seed"]))
    n_pos, n_neg = sum(c[1] for c in called), sum(c[3] for c in called)
    tables = {"raw": reliability_table(y, raw, cal.ece_bins), "calibrated": reliability_table(y, calibrated, cal.ece_bins)}
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "reliability.csv") as tmp:
        pd.concat([t.assign(probabilities=k) for k, t in tables.items()]).to_csv(tmp, index=False)
    plot_reliability(tables, out_dir / "reliability.png", "pooled test folds")
    return {
        **{m: iv.to_dict() for m, iv in cis.items()},
        "ece": _round4(expected_calibration_error(y, raw, cal.ece_bins)),
        "ece_calibrated": _round4(expected_calibration_error(y, calibrated, cal.ece_bins)),
        "ece_bins": cal.ece_bins,
        "sensitivity": _round4(sum(c[0] * c[1] for c in called if c[0] is not None) / n_pos) if n_pos else None,
        "specificity": _round4(sum(c[2] * c[3] for c in called if c[2] is not None) / n_neg) if n_neg else None,
        "negative_class": classes[neg],
        "n_slides": int(len(test)),
    }


def _round4(value: float | None) -> float | None:
    """summary.json holds null where no fold had the metric (strict JSON has no NaN)."""
    return None if value is None else round(value, 4)


def _round3(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


if __name__ == "__main__":
    sys.exit(main())
