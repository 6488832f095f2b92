"""Cross-validated training of one model family, tracked in MLflow.

One parent run per model with a nested run per fold. Each fold logs its params, per-epoch losses and metrics,
val/test metrics and its bundle; the parent logs the mean +/- std over folds, ROC curves, the confusion matrix,
the splits and per-slide predictions, and the bundle of the fold with the best *validation* value of the
method's monitored metric as a pyfunc model (the one promoted and served). Test folds never choose anything.
Works for every registered method: it only talks to the method contract.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from slidemil.bundle import BundleSpec, CalibrationSpec, ModelBundle
from slidemil.evaluation.calibration import CalibrationConfig, fit_calibration
from slidemil.evaluation.metrics import METRICS, confusion, roc_points, slide_metrics, summarise_folds
from slidemil.evaluation.plots import plot_confusion, plot_roc
from slidemil.methods import build_method
from slidemil.training.config import TrainConfig
from slidemil.training.data import SlideRef, SlideSource
from slidemil.training.fold import train_fold
from slidemil.training.parallel import FoldPool, resolve_parallel_folds
from slidemil.training.run_log import global_rank, run_log
from slidemil.utils.atomic import atomic_path, write_json_atomic

log = logging.getLogger(__name__)


@dataclass
class CVSpec:
    method: str
    method_config: dict
    train: TrainConfig
    class_names: list[str]
    bundle_context: dict  # components, tile_sets, tiling, tissue, heatmap copied into every bundle
    extra_params: dict = field(default_factory=dict)  # logged on the parent run (data version, ...)
    family: str | None = None  # run/display name when it differs from the method (e.g. "tuned")
    #: the data version every run logs as its MLflow dataset input (the DVC hash of the features) and where
    #: that data lives; None = no dataset input
    dataset_digest: str | None = None
    dataset_source: str | None = None
    calibration: CalibrationConfig | None = None  # fitted on each fold's validation predictions; None: T = 1

    @property
    def name(self) -> str:
        return self.family or self.method


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


def run_cross_validation(slides: pd.DataFrame, splits: pd.DataFrame, spec: CVSpec, source: SlideSource,
                         out_dir: str | Path, *, parallel_folds: int | str = 1) -> CVResult | None:
    """``slides``: slide_id, label (class name). ``splits``: fold, slide_id, split. ``source`` loads each
    slide's layers. Returns None on the non-zero ranks of a distributed run (rank 0 writes everything).

    ``parallel_folds`` (``auto`` or N): folds trained at once in forked processes, same results as one at a
    time (:mod:`slidemil.training.parallel`); logging and files stay in this process, in fold order."""
    out_dir = Path(out_dir)
    if global_rank() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    index = {c: i for i, c in enumerate(spec.class_names)}
    refs = {r.slide_id: SlideRef(r.slide_id, index[r.label]) for r in slides.itertuples()}
    method = build_method(spec.method, spec.method_config)
    tracker = run_log()
    rank0 = global_rank() == 0
    fold_rows, all_preds, bundles, calibrations = [], [], {}, {}
    with tracker.run(spec.name, tags={"slidemil.model": spec.name, "slidemil.method": spec.method,
                                      "slidemil.kind": "cv-parent"}) as parent_id:
        tracker.params({f"method.{k}": v for k, v in spec.method_config.items()})
        tracker.params({f"train.{k}": v for k, v in spec.train.to_dict().items()})
        for tile_set, enc in spec.bundle_context.get("components", {}).get("encoders", {}).items():
            tracker.params({f"encoder.{tile_set}.{k}": v for k, v in enc.items()})
        tracker.params({f"tiling.{k}": v for k, v in spec.bundle_context.get("tiling", {}).items()})
        tracker.params({**spec.extra_params, "n_slides": len(slides), "n_folds": splits["fold"].nunique(),
                        "selection": f"{method.monitor} ({method.mode}) on validation"})
        _log_dataset(tracker, spec, slides)
        fold_parts = {int(fold): {s: [refs[i] for i in fsplit.loc[fsplit.split == s, "slide_id"]]
                                  for s in ("train", "val", "test")} for fold, fsplit in splits.groupby("fold")}
        n_parallel = resolve_parallel_folds(parallel_folds, spec.train, len(fold_parts))
        pool = FoldPool(n_parallel, method, fold_parts, source, spec.train, spec.class_names) \
            if n_parallel > 1 else contextlib.nullcontext()
        with pool:
            for fold, parts in fold_parts.items():
                res = _fold(tracker, spec, slides, fold, parts, pool, method, source, parent_id, out_dir)
                if res is None:  # not rank 0
                    continue
                fold_rows.append(res[0])
                all_preds.append(res[1])
                bundles[fold] = res[2]
                calibrations[fold] = res[3]
        tracker.params({"parallel_folds": n_parallel})
        if not rank0:
            return None
        per_fold = pd.DataFrame(fold_rows)
        preds = pd.concat(all_preds, ignore_index=True)
        summary = {
            "test": summarise_folds(per_fold.rename(columns=lambda c: c[5:] if c.startswith("test_") else c)
                                    [[m for m in METRICS if f"test_{m}" in per_fold]]),
            "val": summarise_folds(per_fold.rename(columns=lambda c: c[4:] if c.startswith("val_") else c)
                                   [[m for m in METRICS if f"val_{m}" in per_fold]]),
        }
        for split, s in summary.items():  # the folds' names (test_auc), so the runs table lines up; _std beside
            for m, v in s.items():             # (_mean: the same value, kept for the dashboard and promotion)
                tracker.metrics({f"{split}_{m}": v["mean"], f"{split}_{m}_std": v["std"],
                                 f"{split}_{m}_mean": v["mean"]})
        pick = per_fold["best_score"].idxmin() if method.mode == "min" else per_fold["best_score"].idxmax()
        best_fold = int(per_fold.loc[pick, "fold"])
        selection = f"{'lowest' if method.mode == 'min' else 'highest'} validation {method.monitor.removeprefix('val_')}"
        tracker.params({"selected_fold": best_fold, "selection_rule": selection})
        _write_artifacts(out_dir, spec, splits, per_fold, preds, summary, best_fold, selection, parent_id,
                         calibrations)
        tracker.artifacts(str(out_dir / "report"), "report")
        bundle_dir = ModelBundle.load(bundles[best_fold]).save(out_dir / "bundle")
        tracker.bundle(str(bundle_dir))
    return CVResult(spec.name, parent_id, per_fold, preds, summary, best_fold, bundle_dir)


def _fold(tracker, spec: CVSpec, slides: pd.DataFrame, fold: int, parts: dict, pool, method, source: SlideSource,
          parent_id: str, out_dir: Path) -> tuple[dict, pd.DataFrame, Path, dict] | None:
    """One fold's nested MLflow run: train (here, or take the result from ``pool``), log, save its bundle.
    Returns (metrics row, predictions, bundle dir, calibration), or None on the non-zero ranks of a distributed
    run."""
    with tracker.run(f"{spec.name}-fold{fold}", nested=True,
                     tags={"slidemil.model": spec.name, "slidemil.fold": str(fold),
                           "slidemil.kind": "cv-fold"}) as fold_run_id:
        tracker.params({"fold": fold, **{f"n_{s}": len(v) for s, v in parts.items()}})
        _log_dataset(tracker, spec, slides)
        if isinstance(pool, FoldPool):
            res = pool.result(fold)
            for row in res.history:  # the per-epoch metrics the in-process sink would have logged live
                tracker.metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        else:
            res = train_fold(fold, method, parts, source, spec.train, spec.class_names,
                             metric_sink=tracker.metrics)
        if res is None:
            return None
        tracker.params({"world_size": res.world_size})
        row = {"fold": fold, "best_epoch": res.best_epoch, "epochs_run": res.epochs_run,
               "best_val_loss": res.best_val_loss, "best_score": res.best_score}
        for split in ("val", "test"):
            p = res.predictions[res.predictions.split == split]
            if len(p):
                m = slide_metrics(p["label"].to_numpy(), _prob_matrix(p, spec.class_names))
                row.update({f"{split}_{k}": v for k, v in m.items()})
        calibration = _fit_fold_calibration(spec, res.predictions)
        if calibration.n_val:
            row.update({"temperature": calibration.temperature, "threshold": calibration.threshold})
        tracker.metrics({k: v for k, v in row.items() if k != "fold" and not pd.isna(v)})
        bundle = ModelBundle(BundleSpec(
            method=spec.method, method_config=spec.method_config, class_names=spec.class_names,
            **_context_for(method, spec.bundle_context),
            metadata={"fold": fold, "cv_parent_run_id": parent_id, "fold_run_id": fold_run_id,
                      "best_epoch": res.best_epoch, "monitor": res.monitor, "best_score": res.best_score,
                      "val_loss": res.best_val_loss, **spec.extra_params},
            calibration=calibration,
        ), res.state_dict)
        bundle_dir = bundle.save(out_dir / "folds" / f"fold{fold}" / "bundle")
        tracker.artifacts(str(bundle_dir), "bundle")
        with tempfile.TemporaryDirectory() as tmp:  # the parent's artifact paths, so compare finds them
            _write_report(Path(tmp), res.predictions, spec.class_names, f"{spec.name} fold {fold}")
            tracker.artifacts(tmp, "report")
        log.info("%s fold %d: best epoch %d/%d, %s %.4f, test auc %.4f", spec.name, fold, res.best_epoch,
                 res.epochs_run, res.monitor, res.best_score, row.get("test_auc", float("nan")))
        return row, res.predictions, bundle_dir, calibration.model_dump()


def _fit_fold_calibration(spec: CVSpec, preds: pd.DataFrame) -> CalibrationSpec:
    """Temperature and operating point from this fold's *validation* predictions only (test never chooses)."""
    val = preds[preds.split == "val"]
    if spec.calibration is None or val.empty:
        return CalibrationSpec()
    fit = fit_calibration(val["label"].to_numpy(), _prob_matrix(val, spec.class_names), spec.class_names,
                          spec.calibration)
    return CalibrationSpec(**fit.to_dict())


def _context_for(method, context: dict) -> dict:
    """The bundle context restricted to the tile sets this method reads (serving encodes only those)."""
    needed = set(method.input_dims()) | {"tiles"}
    components = dict(context.get("components", {}))
    components["encoders"] = {k: v for k, v in components.get("encoders", {}).items() if k in needed}
    tile_sets = [t for t in context.get("tile_sets", ["tiles"]) if t in needed]
    return {**context, "components": components, "tile_sets": tile_sets}


def _write_artifacts(out_dir: Path, spec: CVSpec, splits: pd.DataFrame, per_fold: pd.DataFrame,
                     preds: pd.DataFrame, summary: dict, best_fold: int, selection: str, run_id: str,
                     calibrations: dict[int, dict]) -> None:
    report = out_dir / "report"
    report.mkdir(exist_ok=True)
    splits.to_csv(report / "splits.csv", index=False)
    per_fold.to_csv(report / "per_fold_metrics.csv", index=False)
    with atomic_path(out_dir / "predictions.csv") as tmp:
        preds.to_csv(tmp, index=False, float_format="%.10g")
    _write_report(report, preds, spec.class_names, f"{spec.name} (all folds)")
    write_json_atomic(out_dir / "summary.json", {
        "model": spec.name, "method": spec.method, "parent_run_id": run_id, "selected_fold": best_fold,
        "selection": selection, "summary": summary,
        "per_fold": json.loads(per_fold.to_json(orient="records")),
        "calibration": {str(k): v for k, v in calibrations.items()},  # per fold, fitted on its validation slides
    })


def _write_report(folder: Path, preds: pd.DataFrame, class_names: list[str], title: str) -> None:
    """``predictions.csv``, ``roc_test.png`` and ``confusion_test.png``: the same names in every fold and
    parent run, so MLflow's compare view lines the figures up. ROC: one thin line per fold and class."""
    preds.to_csv(folder / "predictions.csv", index=False, float_format="%.10g")
    test = preds[preds.split == "test"]
    if test.empty:
        return
    roc = pd.concat([roc_points(g["label"].to_numpy(), _prob_matrix(g, class_names), class_names).assign(fold=f)
                     for f, g in test.groupby("fold")], ignore_index=True)
    plot_roc(roc, folder / "roc_test.png", f"{title}: test ROC")
    plot_confusion(confusion(test["label"].to_numpy(), _prob_matrix(test, class_names), len(class_names)),
                   class_names, folder / "confusion_test.png", f"{title}: test")


def _log_dataset(tracker, spec: CVSpec, slides: pd.DataFrame) -> None:
    """The slide table as the run's dataset input, named by the data version (MLflow's Dataset column)."""
    if spec.dataset_digest:
        tracker.dataset(slides[["slide_id", "label"]], name="slidemil-features", digest=spec.dataset_digest,
                        source=spec.dataset_source)
