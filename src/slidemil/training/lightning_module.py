"""Lightning wrapper around any registered MIL model: one slide per step, validation loss for selection."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from slidemil.evaluation.metrics import macro_auc
from slidemil.models import build_model


class MILModule(L.LightningModule):
    """Trains ``build_model(model_name, model_config)`` with Adam (methods.md A: lr 2e-4, wd 1e-5).

    ``val_loss`` is the bag cross-entropy only (what CLAM's early stopping watches); the instance term is a
    training signal, not a selection criterion.
    """

    def __init__(self, model_name: str, model_config: dict, lr: float = 2e-4, weight_decay: float = 1e-5):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model_name, model_config)
        self._val: list[tuple[np.ndarray, int, float]] = []

    def forward(self, features: torch.Tensor):
        return self.model(features)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.model(batch["features"], label=batch["label"], instance_eval=True)
        loss, parts = self.model.loss(out, batch["label"])
        self.log("train_loss", parts["total"], on_step=False, on_epoch=True, batch_size=1)
        if "instance" in parts:
            self.log("train_inst_loss", parts["instance"], on_step=False, on_epoch=True, batch_size=1)
        self.log("train_error", float(out.prediction != int(batch["label"])), on_step=False, on_epoch=True,
                 batch_size=1)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.model(batch["features"])
        loss = self.model.bag_loss(out, batch["label"])
        self._val.append((out.probs.detach().cpu().numpy(), int(batch["label"]), float(loss)))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        probs = np.stack([p for p, _, _ in self._val])
        labels = np.array([y for _, y, _ in self._val])
        self.log("val_loss", float(np.mean([loss for _, _, loss in self._val])), prog_bar=True)
        self.log("val_error", float((probs.argmax(1) != labels).mean()))
        auc = macro_auc(labels, probs)
        if not np.isnan(auc):
            self.log("val_auc", auc)
        self._val.clear()

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
