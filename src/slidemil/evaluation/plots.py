"""Figures logged as artifacts: ROC curves and confusion matrices (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def plot_roc(roc: pd.DataFrame, path: str | Path, title: str) -> Path:
    """``roc`` rows: class, fpr, tpr (optionally a ``fold`` column: one thin line per fold)."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    groups = roc.groupby(["class", "fold"]) if "fold" in roc else roc.groupby("class")
    colours = {c: f"C{i}" for i, c in enumerate(sorted(roc["class"].unique()))}
    seen = set()
    for key, g in groups:
        cls = key[0] if isinstance(key, tuple) else key
        ax.plot(g["fpr"], g["tpr"], color=colours[cls], alpha=0.6, lw=1, label=None if cls in seen else cls)
        seen.add(cls)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_confusion(cm: np.ndarray, class_names: list[str], path: str | Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=100)
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def save_figure(fig, artifact_name: str) -> None:
    """Log a matplotlib figure as an MLflow artifact of the active run and close it."""
    import mlflow

    fig.set_size_inches(7, 4.5)
    fig.tight_layout()
    mlflow.log_figure(fig, artifact_name)
    plt.close(fig)
