"""DVC stage `evaluate`: metrics.json (mean and std per metric and model) and ROC curves for `dvc plots`.

Per family it adds ``pooled_test``: the test folds' predictions pooled, with bootstrap 95% intervals (over
patients when a patient has several slides) for AUC, balanced accuracy and macro F1, the ECE before and after
each fold's temperature (fitted on that fold's validation slides), and sensitivity / specificity at each fold's
validation operating point; plus a reliability diagram per family.
"""

from __future__ import annotations

import json
import sys

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
from slidemil.evaluation.metrics import roc_points
from slidemil.evaluation.uncertainty import bootstrap_cis
from slidemil.utils.atomic import atomic_path, write_json_atomic


def main() -> int:
    log = setup_logging("evaluate")
    p = load_params()
    classes = list(p["data"]["classes"])
    train_dir = project_path(p["train"]["out_dir"])
    ev = p["evaluate"]
    metrics, roc_dir = {}, project_path(ev["roc_dir"])
    roc_dir.mkdir(parents=True, exist_ok=True)
    cases = pd.read_csv(project_path(p["validate"]["manifest_out"])).set_index("slide_id")["case_id"].astype(str)
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
        metrics[name]["pooled_test"] = pooled_test_metrics(test, classes, cases, summary.get("calibration", {}), p,
                                                           project_path(ev["calibration_dir"]) / name)
        pooled = metrics[name]["pooled_test"]
        log.info("%s: test AUC %s +/- %s; pooled %s [%s, %s], ECE %s -> %s", name, metrics[name]["test_auc"]["mean"],
                 metrics[name]["test_auc"]["std"], pooled["auc"]["estimate"], pooled["auc"]["low"],
                 pooled["auc"]["high"], pooled["ece"], pooled["ece_calibrated"])
    baseline = ev.get("baseline")
    if baseline in metrics:
        for name in metrics:
            auc, base = metrics[name]["test_auc"]["mean"], metrics[baseline]["test_auc"]["mean"]
            if name != baseline and auc is not None and base is not None:
                metrics[name]["test_auc_gain_over_" + baseline] = round(auc - base, 4)
    write_json_atomic(project_path(ev["metrics"]), metrics)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
