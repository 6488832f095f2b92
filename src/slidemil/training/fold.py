"""Train one fold: Lightning fit with early stopping on validation loss, best checkpoint, per-slide predictions."""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

from slidemil.training.bags import BagDataset, BagItem, FeatureCache, balanced_sampler, single_bag
from slidemil.training.config import TrainConfig
from slidemil.training.lightning_module import MILModule

log = logging.getLogger(__name__)


class EpochHistory(Callback):
    """Records every epoch's metrics (after validation) and forwards them to an optional sink (MLflow)."""

    def __init__(self, sink=None):
        self.rows: list[dict[str, float]] = []
        self.sink = sink

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) or isinstance(v, float)}
        row["epoch"] = trainer.current_epoch
        self.rows.append(row)
        if self.sink is not None:
            self.sink({k: v for k, v in row.items() if k != "epoch"}, trainer.current_epoch)


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    state_dict: dict
    predictions: pd.DataFrame
    history: list[dict] = field(default_factory=list)


def feature_stats(dataset: BagDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std over every tile of the training bags (training data only)."""
    total, sq, n = None, None, 0
    for i in range(len(dataset)):
        x = dataset[i]["features"].double()
        total = x.sum(0) if total is None else total + x.sum(0)
        sq = (x * x).sum(0) if sq is None else sq + (x * x).sum(0)
        n += x.shape[0]
    mean = total / n
    std = (sq / n - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.float()


def predict_bags(model: torch.nn.Module, dataset: BagDataset, class_names: list[str], split: str) -> pd.DataFrame:
    """Per-slide probabilities (eval mode, no grad) as rows ``slide_id, split, label, pred, prob_<class>``."""
    model.eval()
    rows = []
    with torch.inference_mode():
        for i in range(len(dataset)):
            bag = dataset[i]
            out = model(bag["features"])
            probs = out.probs.float().cpu().numpy()
            row = {"slide_id": bag["slide_id"], "split": split, "label": bag["label"], "pred": int(probs.argmax())}
            row.update({f"prob_{c}": float(p) for c, p in zip(class_names, probs, strict=True)})
            rows.append(row)
    return pd.DataFrame(rows)


def train_fold(
    fold: int,
    model_name: str,
    model_config: dict,
    splits: dict[str, list[BagItem]],
    cfg: TrainConfig,
    class_names: list[str],
    *,
    cache: FeatureCache | None = None,
    metric_sink=None,
    workdir: str | Path | None = None,
    extra_callbacks: list[Callback] | None = None,
) -> FoldResult:
    """Fit on ``splits['train']``, select on ``splits['val']``, predict val and test with the best checkpoint."""
    for part in ("train", "val"):
        if not splits.get(part):
            raise ValueError(f"fold {fold} has no {part} slides: each class needs at least 3 cases (patients) "
                             "for grouped train/val/test splits")
    if cfg.num_threads and cfg.accelerator in ("auto", "cpu"):
        torch.set_num_threads(cfg.num_threads)
    L.seed_everything(cfg.seed + fold, workers=True, verbose=False)
    cache = cache or FeatureCache()
    train_ds, val_ds = BagDataset(splits["train"], cache), BagDataset(splits["val"], cache)
    sampler = balanced_sampler(splits["train"], cfg.seed + fold) if cfg.balanced_sampling else None
    train_dl = DataLoader(train_ds, batch_size=1, shuffle=sampler is None, sampler=sampler, collate_fn=single_bag,
                          generator=torch.Generator().manual_seed(cfg.seed + fold))
    val_dl = DataLoader(val_ds, batch_size=1, shuffle=False, collate_fn=single_bag)
    module = MILModule(model_name, model_config, lr=cfg.lr, weight_decay=cfg.weight_decay)
    mean, std = feature_stats(train_ds)
    module.model.set_feature_stats(mean, std)
    history = EpochHistory(metric_sink)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        ckpt = ModelCheckpoint(dirpath=tmp, monitor="val_loss", mode="min", save_top_k=1, filename="best")
        trainer = L.Trainer(
            max_epochs=cfg.max_epochs,
            min_epochs=min(cfg.min_epochs, cfg.max_epochs),
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            callbacks=[EarlyStopping("val_loss", patience=cfg.patience, mode="min"), ckpt, history,
                       *(extra_callbacks or [])],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            deterministic=cfg.deterministic,
            default_root_dir=tmp,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            trainer.fit(module, train_dl, val_dl)
        best = MILModule.load_from_checkpoint(ckpt.best_model_path, map_location="cpu")
    model = best.model.cpu().eval()
    preds = pd.concat(
        [predict_bags(model, BagDataset(splits[s], cache), class_names, s) for s in ("val", "test") if splits.get(s)],
        ignore_index=True,
    )
    preds.insert(0, "fold", fold)
    best_row = min(history.rows, key=lambda r: r.get("val_loss", np.inf)) if history.rows else {}
    return FoldResult(
        fold=fold,
        best_epoch=int(best_row.get("epoch", -1)),
        best_val_loss=float(ckpt.best_model_score) if ckpt.best_model_score is not None else float("nan"),
        epochs_run=len(history.rows),
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        predictions=preds,
        history=history.rows,
    )
