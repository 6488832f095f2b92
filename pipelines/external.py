"""DVC stage `external`: every cohort in ``external.cohorts`` evaluated with its registered model.

Per cohort (``data/external/<name>/``): the validation report, metrics with 95% CIs, ECE before / after
calibration, the validation operating point, per-slide predictions, heatmaps, top tiles, a reliability
diagram and ``report.md``; an MLflow run linked to the model version. ``data/external/metrics.json`` holds
every cohort's headline numbers for `dvc metrics show`. A cohort with classes the model does not know
stops the stage with the reason.
"""

from __future__ import annotations

import sys

from pipelines.common import ROOT, load_params, project_path, setup_logging
from slidemil.external import (
    CohortError,
    ExternalConfig,
    ModelRef,
    cohort_stain_target,
    evaluate_external,
    load_model,
    log_external_run,
    with_stain_normalisation,
)
from slidemil.tracking import setup_tracking
from slidemil.utils.atomic import write_json_atomic


def main() -> int:
    log = setup_logging("external")
    p = load_params()
    ext, u = p["external"], p["uncertainty"]
    cfg = ExternalConfig(n_boot=int(u["n_boot"]), level=float(u["level"]), seed=int(u["seed"]),
                         ece_bins=int(p["calibration"]["ece_bins"]), top_k=int(ext["top_k"]),
                         heatmaps=bool(ext["heatmaps"]), default_mpp=p["slides"].get("default_mpp"),
                         batch_size=int(p["features"]["batch_size"]), device=p["features"]["device"])
    setup_tracking(ROOT, p["train"]["experiment"])
    summary = {}
    for name, cohort in ext["cohorts"].items():
        ref = ModelRef.parse(cohort["model"])
        bundle, mv = load_model(ref)
        if cohort.get("stain_normalisation"):  # tiles normalised to the training cohort's stain before encoding
            bundle = with_stain_normalisation(bundle, cohort_stain_target(
                project_path(p["stains"]["out_dir"]), p["stains"]["fit"]))
        out_dir = project_path(ext["out_dir"]) / name
        try:
            metrics = evaluate_external(bundle, project_path(cohort["manifest"]), out_dir,
                                        model=f"{ref} (v{mv.version})", cohort=name, cfg=cfg)
        except CohortError as exc:
            log.error("%s", exc)
            return 1
        run_id = log_external_run(metrics, out_dir, mv, name, ext["experiment"])
        auc = metrics["auc"]
        summary[name] = {"model": str(ref), "version": str(mv.version), "run_id": run_id,
                         "auc": auc["estimate"], "auc_ci_low": auc["low"], "auc_ci_high": auc["high"],
                         "balanced_accuracy": metrics["balanced_accuracy"]["estimate"],
                         "macro_f1": metrics["macro_f1"]["estimate"], "ece": metrics["ece"],
                         "ece_calibrated": metrics["ece_calibrated"],
                         "sensitivity": metrics["operating_point"]["sensitivity"],
                         "specificity": metrics["operating_point"]["specificity"],
                         "stain_normalisation": metrics["stain_normalisation"], "n_slides": metrics["n_slides"]}
        log.info("%s: %s v%s AUC %s [%s, %s], ECE %.3f -> %.3f, sens %s spec %s (run %s)", name, ref, mv.version,
                 auc["estimate"], auc["low"], auc["high"], metrics["ece"], metrics["ece_calibrated"],
                 metrics["operating_point"]["sensitivity"], metrics["operating_point"]["specificity"], run_id)
    write_json_atomic(project_path(ext["metrics"]), summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
