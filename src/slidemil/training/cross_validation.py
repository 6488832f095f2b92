"""Cross-validated training of one model family, tracked in MLflow.

One parent run per model with a nested run per fold. Each fold logs its params, per-epoch losses and metrics,
val/test metrics and its bundle; the parent logs the mean +/- std over folds, ROC curves, the confusion matrix,
the splits and per-slide predictions, and the bundle of the fold with the lowest *validation* loss as a pyfunc
model (the one promoted and served). Test folds are never used to choose anything.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from slidemil.bundle import ModelBundle
from slidemil.evaluation.metrics import METRICS, confusion, roc_points, slide_metrics, summarise_folds
from slidemil.evaluation.plots import plot_confusion, plot_roc
from slidemil.mlflow_model import log_bundle
from slidemil.training.bags import BagItem, FeatureCache
from slidemil.training.config import TrainConfig
from slidemil.training.fold import train_fold
from slidemil.utils.atomic import atomic_path, write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class CVSpec:
    model_name: str
    model_config: dict
    train: TrainConfig
    class_names: list[str]
    bundle_context: dict  # encoder, tiling, tissue, heatmap dicts copied into every bundle
    extra_params: dict = field(default_factory=dict)  # logged on the parent run (data version, ...)
    family: str | None = None  # run/display name when it differs from the model type (e.g. "tuned")

    @property
    def name(self) -> str:
        return self.family or self.model_name


@dataclass
class CVResult:
    model_name: str
    parent_run_id: str
    per_fold: pd.DataFrame
    predictions: pd.DataFrame
    summary: dict
    best_fold: int
    bundle_dir: Path


def _prob_matrix(preds: pd.DataFrame, class_names: list[str]) -> np.ndarray:
    return preds[[f"prob_{c}" for c in class_names]].to_numpy()


def run_cross_validation(slides: pd.DataFrame, splits: pd.DataFrame, spec: CVSpec, out_dir: str | Path) -> CVResult:
    """``slides``: slide_id, label (class name), features_path. ``splits``: fold, slide_id, split."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index = {c: i for i, c in enumerate(spec.class_names)}
    items = {r.slide_id: BagItem(r.slide_id, Path(r.features_path), index[r.label]) for r in slides.itertuples()}
    cache = FeatureCache(preload=True)
    fold_rows, all_preds, bundles = [], [], {}
    with mlflow.start_run(run_name=spec.name) as parent:
        mlflow.set_tags({"slidemil.model": spec.name, "slidemil.model_type": spec.model_name,
                         "slidemil.kind": "cv-parent"})
        mlflow.log_params({f"model.{k}": v for k, v in spec.model_config.items()})
        mlflow.log_params({f"train.{k}": v for k, v in spec.train.to_dict().items()})
        mlflow.log_params({f"encoder.{k}": v for k, v in spec.bundle_context.get("encoder", {}).items()})
        mlflow.log_params({f"tiling.{k}": v for k, v in spec.bundle_context.get("tiling", {}).items()})
        mlflow.log_params({**spec.extra_params, "n_slides": len(slides), "n_folds": splits["fold"].nunique()})
        for fold, fsplit in splits.groupby("fold"):
            parts = {s: [items[i] for i in fsplit.loc[fsplit.split == s, "slide_id"]] for s in ("train", "val", "test")}
            with mlflow.start_run(run_name=f"{spec.name}-fold{fold}", nested=True):
                mlflow.set_tags({"slidemil.model": spec.name, "slidemil.fold": str(fold),
                                 "slidemil.kind": "cv-fold"})
                mlflow.log_params({"fold": fold, **{f"n_{s}": len(v) for s, v in parts.items()}})
                res = train_fold(int(fold), spec.model_name, spec.model_config, parts, spec.train,
                                 spec.class_names, cache=cache, metric_sink=lambda m, step: mlflow.log_metrics(m, step=step))
                row = {"fold": int(fold), "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
                       "best_val_loss": res.best_val_loss}
                for split in ("val", "test"):
                    p = res.predictions[res.predictions.split == split]
                    if len(p):
                        m = slide_metrics(p["label"].to_numpy(), _prob_matrix(p, spec.class_names))
                        row.update({f"{split}_{k}": v for k, v in m.items()})
                mlflow.log_metrics({k: v for k, v in row.items() if k != "fold" and not pd.isna(v)})
                bundle = ModelBundle(
                    model_name=spec.model_name, model_config=spec.model_config, class_names=spec.class_names,
                    **spec.bundle_context,
                    metadata={"fold": int(fold), "cv_parent_run_id": parent.info.run_id,
                              "fold_run_id": mlflow.active_run().info.run_id, "best_epoch": res.best_epoch,
                              "val_loss": res.best_val_loss, **spec.extra_params},
                    state_dict=res.state_dict,
                )
                bundles[int(fold)] = bundle.save(out_dir / "folds" / f"fold{fold}" / "bundle")
                mlflow.log_artifacts(str(bundles[int(fold)]), "bundle")
                with tempfile.TemporaryDirectory() as tmp:
                    res.predictions.to_csv(Path(tmp) / "predictions.csv", index=False)
                    mlflow.log_artifact(str(Path(tmp) / "predictions.csv"))
                fold_rows.append(row)
                all_preds.append(res.predictions)
                log.info("%s fold %d: best epoch %d/%d, val loss %.4f, test auc %.4f", spec.name, fold,
                         res.best_epoch, res.epochs_run, res.best_val_loss, row.get("test_auc", float("nan")))
        per_fold = pd.DataFrame(fold_rows)
        preds = pd.concat(all_preds, ignore_index=True)
        summary = {
            "test": summarise_folds(per_fold.rename(columns=lambda c: c[5:] if c.startswith("test_") else c)
                                    [[m for m in METRICS if f"test_{m}" in per_fold]]),
            "val": summarise_folds(per_fold.rename(columns=lambda c: c[4:] if c.startswith("val_") else c)
                                   [[m for m in METRICS if f"val_{m}" in per_fold]]),
        }
        for split, s in summary.items():
            for m, v in s.items():
                mlflow.log_metrics({f"{split}_{m}_mean": v["mean"], f"{split}_{m}_std": v["std"]})
        best_fold = int(per_fold.loc[per_fold["best_val_loss"].idxmin(), "fold"])
        mlflow.log_params({"selected_fold": best_fold, "selection": "lowest validation loss"})
        _write_artifacts(out_dir, spec, splits, per_fold, preds, summary, best_fold, bundles[best_fold],
                         parent.info.run_id)
        mlflow.log_artifacts(str(out_dir / "report"), "report")
        bundle_dir = ModelBundle.load(bundles[best_fold]).save(out_dir / "bundle")
        log_bundle(bundle_dir, name="model")
    return CVResult(spec.name, parent.info.run_id, per_fold, preds, summary, best_fold, bundle_dir)


def _write_artifacts(out_dir: Path, spec: CVSpec, splits: pd.DataFrame, per_fold: pd.DataFrame,
                     preds: pd.DataFrame, summary: dict, best_fold: int, best_bundle: Path, run_id: str) -> None:
    report = out_dir / "report"
    report.mkdir(exist_ok=True)
    splits.to_csv(report / "splits.csv", index=False)
    per_fold.to_csv(report / "per_fold_metrics.csv", index=False)
    with atomic_path(out_dir / "predictions.csv") as tmp:
        preds.to_csv(tmp, index=False, float_format="%.10g")
    preds.to_csv(report / "predictions.csv", index=False, float_format="%.10g")
    test = preds[preds.split == "test"]
    probs = _prob_matrix(test, spec.class_names)
    roc = pd.concat([roc_points(g["label"].to_numpy(), _prob_matrix(g, spec.class_names), spec.class_names)
                     .assign(fold=f) for f, g in test.groupby("fold")], ignore_index=True)
    plot_roc(roc, report / "roc_test.png", f"{spec.name}: test ROC per fold")
    plot_confusion(confusion(test["label"].to_numpy(), probs, len(spec.class_names)), spec.class_names,
                   report / "confusion_test.png", f"{spec.name}: test (all folds)")
    write_json_atomic(out_dir / "summary.json", {
        "model": spec.name, "model_type": spec.model_name, "parent_run_id": run_id, "selected_fold": best_fold,
        "selection": "lowest validation loss", "summary": summary,
        "per_fold": json.loads(per_fold.to_json(orient="records")),
    })
