"""Slide-level metrics (methods.md section A): AUC, accuracy, balanced accuracy, macro F1; mean +/- std over folds.

Multiclass AUC is the mean of one-vs-rest AUCs over the classes present in ``y_true`` (a fold whose test set
lacks a class cannot score it, and pretending otherwise inflates or crashes).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)

METRICS = ("auc", "accuracy", "balanced_accuracy", "macro_f1")


def slide_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """``y_true`` (n,) class indices, ``probs`` (n, C) -> the four metrics (AUC NaN if one class only)."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    pred = probs.argmax(1)
    n_classes = probs.shape[1]
    return {
        "auc": macro_auc(y_true, probs),
        "accuracy": float(accuracy_score(y_true, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "macro_f1": float(f1_score(y_true, pred, average="macro", labels=list(range(n_classes)), zero_division=0)),
    }


def macro_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    present = np.unique(y_true)
    if present.size < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    return float(np.mean([roc_auc_score(y_true == c, probs[:, c]) for c in present]))


def roc_points(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """One-vs-rest ROC curves as long-format rows ``class, fpr, tpr`` (for DVC plots and overlays)."""
    rows = []
    y_true = np.asarray(y_true, dtype=int)
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    for c in classes:
        pos = y_true == c
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = roc_curve(pos, probs[:, c])
        rows += [{"class": class_names[c], "fpr": float(f), "tpr": float(t)} for f, t in zip(fpr, tpr, strict=True)]
    return pd.DataFrame(rows, columns=["class", "fpr", "tpr"])


MICRO = "micro-average"


def micro_roc(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Micro-averaged ROC (every slide x class decision pooled): one monotone curve that summarises a
    multiclass model, so a model comparison draws one line per model. Two classes: the positive class."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    if probs.shape[1] == 2:
        fpr, tpr, _ = roc_curve(y_true == 1, probs[:, 1])
    else:
        onehot = np.eye(probs.shape[1], dtype=bool)[y_true]
        fpr, tpr, _ = roc_curve(onehot.ravel(), probs.ravel())
    return fpr, tpr


def roc_table(model: str, y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """Long-format ROC rows ``model, curve, step, fpr, tpr``: the micro-average, then one curve per class.

    ``step`` keeps each curve's point order (ties in fpr are vertical steps a plot must not reorder).
    """
    fpr, tpr = micro_roc(y_true, probs)
    parts = [pd.DataFrame({"curve": MICRO, "fpr": fpr, "tpr": tpr})]
    per_class = roc_points(y_true, probs, class_names)
    parts += [g.rename(columns={"class": "curve"}) for _, g in per_class.groupby("class", sort=False)]
    out = []
    for part in parts:
        part = part.reset_index(drop=True)
        out.append(part.assign(model=model, step=np.arange(len(part))))
    return pd.concat(out, ignore_index=True)[["model", "curve", "step", "fpr", "tpr"]]


def confusion(y_true: np.ndarray, probs: np.ndarray, n_classes: int) -> np.ndarray:
    return confusion_matrix(np.asarray(y_true, int), np.asarray(probs).argmax(1), labels=list(range(n_classes)))


def summarise_folds(per_fold: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``per_fold`` has one row per fold and a column per metric -> {metric: {mean, std, n}} (std: ddof=1)."""
    out = {}
    for m in METRICS:
        if m in per_fold:
            vals = per_fold[m].dropna().to_numpy(dtype=float)
            out[m] = {
                "mean": float(vals.mean()) if vals.size else float("nan"),
                "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
                "n": int(vals.size),
            }
    return out


def tile_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """Tile classification metrics (CLASS-M, methods.md section C): balanced accuracy, accuracy, and per-class
    precision / recall / F1 as flat ``{name: value}`` (MLflow metric names, e.g. ``precision_tumour``)."""
    from sklearn.metrics import precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=int)
    pred = np.asarray(probs).argmax(1)
    labels = list(range(len(class_names)))
    p, r, f, _ = precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    out = {"balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
           "accuracy": float(accuracy_score(y_true, pred)),
           "macro_f1": float(np.mean(f))}
    for i, name in enumerate(class_names):
        out.update({f"precision_{name}": float(p[i]), f"recall_{name}": float(r[i]), f"f1_{name}": float(f[i])})
    return out
