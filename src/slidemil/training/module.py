"""One Lightning module for every method: the method supplies losses, evaluation and the optimiser.

Validation metrics are computed on the gathered predictions of all ranks (duplicates that a distributed
sampler pads in are dropped by slide position), so every process logs the same ``val_loss`` / ``val_auc``
and early stopping and checkpointing agree under DDP.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from slidemil.evaluation.metrics import macro_auc
from slidemil.methods import Method


class MethodModule(L.LightningModule):
    """Trains ``method.build_model()`` with ``method.training_loss`` and ``method.configure_optimizers``."""

    def __init__(self, method: Method, lr: float = 2e-4, weight_decay: float = 1e-5):
        super().__init__()
        self.method = method
        self.model = method.build_model()
        self.lr = lr
        self.weight_decay = weight_decay
        self._val: list[tuple[int, np.ndarray, int, float]] = []

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        bags = [bag.to(self.device) for bag in batch["bags"]]
        loss, parts = self.method.training_loss(self.model, bags)
        for key, value in parts.items():
            self.log(f"train_{key}", value, on_step=False, on_epoch=True, batch_size=1,
                     sync_dist=self.trainer.world_size > 1)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        bags = [bag.to(self.device) for bag in batch["bags"]]
        probs, loss = self.method.evaluate(self.model, bags)
        self._val.append((int(batch["index"]), np.asarray(probs, dtype=np.float64), int(batch["label"]),
                          float(loss)))

    def on_validation_epoch_end(self) -> None:
        rows = self._gather(list(self._val))
        self._val.clear()
        if not rows:
            return
        probs = np.stack([p for _, p, _, _ in rows])
        labels = np.array([y for _, _, y, _ in rows])
        self.log("val_loss", float(np.mean([loss for *_, loss in rows])), prog_bar=True)
        self.log("val_error", float((probs.argmax(1) != labels).mean()))
        auc = macro_auc(labels, probs)
        if not np.isnan(auc):
            self.log("val_auc", auc)

    def _gather(self, rows: list[tuple[int, np.ndarray, int, float]]) -> list[tuple[int, np.ndarray, int, float]]:
        """All ranks' validation rows, one per slide, in slide order (identical on every rank)."""
        if self.trainer.world_size <= 1:
            return rows
        n_classes = self.method.n_classes
        local = torch.tensor([[i, y, loss, *p] for i, p, y, loss in rows], dtype=torch.float64,
                             device=self.device).reshape(-1, 3 + n_classes)
        gathered = self.all_gather(local).reshape(-1, 3 + n_classes).cpu().numpy()
        unique: dict[int, tuple[int, np.ndarray, int, float]] = {}
        for row in gathered:
            unique.setdefault(int(row[0]), (int(row[0]), row[3:], int(row[1]), float(row[2])))
        return [unique[i] for i in sorted(unique)]

    def configure_optimizers(self):
        return self.method.configure_optimizers(self.model, self.lr, self.weight_decay)
