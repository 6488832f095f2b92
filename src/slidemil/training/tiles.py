"""The training loop of tile classifiers (methods with ``trains_on = "tiles"``, i.e. CLASS-M).

Why a loop of its own and not the slide-bag Lightning module: one step draws a class-balanced batch of
labelled tiles and a batch of unlabelled tiles, augments pixels K times and mixes them, and validation
scores tiles with the EMA of the weights; none of that is a bag. Selection (which EMA state is kept) is on
the method's ``monitor`` (balanced validation tile accuracy); the test tiles are scored once, at the end,
with the selected state.
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slidemil.evaluation.metrics import confusion, tile_metrics
from slidemil.models.classm_losses import ema_decay_at, ema_update
from slidemil.training.run_log import MlflowRunLog

UNLABELLED = -1


@dataclass
class TileData:
    """Tiles of one split: RGB pixels, class index (-1 = unlabelled), stain matrix and group of each tile."""

    rgb: np.ndarray  # (N, P, P, 3) uint8
    labels: np.ndarray  # (N,) int64
    matrices: list[Any]  # (N,) StainMatrix (tiles of one slide share one object) or None for RGB views
    groups: np.ndarray  # (N,) str: slide / patient / near-copy group, never split across train and test

    def __post_init__(self) -> None:
        n = self.rgb.shape[0]
        if not (len(self.labels) == len(self.matrices) == len(self.groups) == n):
            raise ValueError(f"tile data: {n} images, {len(self.labels)} labels, {len(self.matrices)} matrices, "
                             f"{len(self.groups)} groups")

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
        return self.rgb[rows], [self.matrices[i] for i in rows], self.labels[rows]


@dataclass
class TileFitResult:
    """The selected EMA weights, its epoch and validation metrics, test metrics, per-epoch history."""

    state_dict: dict
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float] = field(default_factory=dict)
    test_confusion: list[list[int]] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0


def balanced_draw(labels: np.ndarray, n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` row indices of labelled tiles, each class equally likely (then a tile uniformly within it)."""
    by_class = [np.flatnonzero(labels == c) for c in range(n_classes)]
    present = [rows for rows in by_class if rows.size]
    if not present:
        raise ValueError("no labelled tiles to train on")
    picks = rng.integers(0, len(present), size=n)
    return np.array([present[k][rng.integers(0, present[k].size)] for k in picks], dtype=np.int64)


def score_tiles(method, model, data: TileData, class_names: Sequence[str]) -> tuple[dict[str, float], np.ndarray]:
    """Tile metrics of the labelled tiles of ``data`` and the confusion matrix (rows = truth)."""
    rows = np.flatnonzero(data.labels >= 0)
    rgb, mats, y = data.take(rows)
    probs = method.tile_probabilities(model, rgb, mats)
    return tile_metrics(y, probs, list(class_names)), confusion(y, probs, len(class_names))


def train_tiles(method, train: TileData, val: TileData, class_names: Sequence[str], *,
                test: TileData | None = None, seed: int = 0,
                on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> TileFitResult:
    """Train ``method``'s model on ``train`` (labelled + unlabelled tiles), select the EMA state with the best
    balanced validation accuracy, score ``test`` with it. ``on_epoch(epoch, metrics)`` receives each epoch's
    logged values (e.g. to MLflow)."""
    cfg = method.config
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = method.build_model()
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    optimizer = method.configure_optimizers(model, cfg.lr, cfg.weight_decay)
    labelled = np.flatnonzero(train.labels >= 0)
    pool = np.flatnonzero(train.labels == UNLABELLED)
    use_unlabelled = cfg.batch_unlabelled > 0 and pool.size > 0
    steps = cfg.steps_per_epoch or max(1, pool.size // max(cfg.batch_unlabelled, 1) if use_unlabelled
                                       else labelled.size // cfg.batch_labelled)
    best: tuple[float, int, dict, dict[str, float]] | None = None
    history = []
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        sums: dict[str, float] = {}
        for i in range(steps):
            rows_l = labelled[balanced_draw(train.labels[labelled], cfg.batch_labelled, cfg.n_classes, rng)]
            unl = None
            if use_unlabelled:
                rows_u = pool[rng.choice(pool.size, size=min(cfg.batch_unlabelled, pool.size), replace=False)]
                unl = train.take(rows_u)[:2]
            loss, parts = method.training_step(model, train.take(rows_l), unl, epoch + i / steps, rng, gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ema_update(ema, model, ema_decay_at(step, cfg.ema_decay))
            step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
        ema.eval()
        val_metrics, _ = score_tiles(method, ema, val, class_names)
        row = {**{f"train_{k}": v / steps for k, v in sums.items()}, **{f"val_{k}": v for k, v in val_metrics.items()}}
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row)
        score = row[method.monitor]
        if best is None or score > best[0]:
            best = (score, epoch, copy.deepcopy(ema.state_dict()), val_metrics)
    assert best is not None, "epochs must be >= 1"
    result = TileFitResult(best[2], best[1], best[3], history=history)
    if test is not None:
        ema.load_state_dict(best[2])
        ema.eval()
        result.test, cm = score_tiles(method, ema, test, class_names)
        result.test_confusion = cm.tolist()
    result.wall_s = time.perf_counter() - start
    return result


def log_tile_fit(log: MlflowRunLog, result: TileFitResult, class_names: Sequence[str],
                 params: dict[str, Any]) -> None:
    """Params, per-epoch train / validation metrics, the selected epoch, test tile metrics (balanced accuracy,
    per-class precision / recall / F1) and the test confusion matrix (artifact ``test_confusion.json``, rows =
    truth) into the active MLflow run."""
    log.params(params)
    for epoch, row in enumerate(result.history):
        log.metrics(row, step=epoch)
    log.metrics({"best_epoch": float(result.best_epoch), "wall_s": result.wall_s,
                 **{f"best_val_{k}": v for k, v in result.val.items()},
                 **{f"test_{k}": v for k, v in result.test.items()}})
    if result.test_confusion:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "test_confusion.json"
            path.write_text(json.dumps({"class_names": list(class_names), "rows_truth_cols_predicted":
                                        result.test_confusion}, indent=2))
            log.artifact(str(path))
