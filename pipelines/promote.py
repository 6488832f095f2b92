"""DVC stage `promote`: register the best evaluated model family in the MLflow registry.

The family with the best mean *validation* AUC (tie: balanced accuracy) is registered; it becomes `champion`
only when it beats the current champion on that metric, otherwise `challenger`.
"""

from __future__ import annotations

import json
import sys

from pipelines.common import ROOT, load_params, project_path, setup_logging
from slidemil.registry import register_and_promote, run_exists
from slidemil.tracking import setup_tracking
from slidemil.utils.atomic import write_json_atomic


def main() -> int:
    log = setup_logging("promote")
    p = load_params()
    pr = p["promote"]
    train_dir = project_path(p["train"]["out_dir"])
    candidates = []
    for name in p["train"]["models"]:
        summary = json.loads((train_dir / name / "summary.json").read_text())
        val = summary["summary"]["val"]
        candidates.append((val[pr["metric"]]["mean"], val.get("balanced_accuracy", {}).get("mean", 0.0), name,
                           summary["parent_run_id"]))
    candidates.sort(reverse=True)
    value, _, name, run_id = candidates[0]
    setup_tracking(ROOT, p["train"]["experiment"], p["train"].get("tracking_uri"))
    if not run_exists(run_id):
        log.error("the tracking store has no run %s (the %s training run): it was made by an earlier `train` that "
                  "DVC restored from its run cache, so the MLflow store was deleted or moved since. Re-run training "
                  "into this store: `dvc repro --force train` (or `dvc repro --no-run-cache`)", run_id, name)
        return 1
    result = register_and_promote(f"runs:/{run_id}/model", pr["model_name"], f"val_{pr['metric']}_mean", value,
                                  run_id=run_id, description=f"{name}, selected on validation {pr['metric']}")
    out = {**result.to_dict(), "family": name, "run_id": run_id,
           "candidates": [{"model": n, f"val_{pr['metric']}_mean": v} for v, _, n, _ in candidates]}
    write_json_atomic(project_path(pr["out"]), out)
    log.info("%s (val %s %.4f) registered as %s v%s -> %s (%s)", name, pr["metric"], value, pr["model_name"],
             result.version, result.alias, result.reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
