"""Train one fold of any method: Lightning fit with early stopping and checkpointing on the method's monitored
validation metric, the best checkpoint restored, per-slide predictions on val and test.

Under DDP every rank trains; only rank 0 predicts and returns a result (the others return None), so files,
bundles and MLflow runs are written once.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

from slidemil.methods import Method
from slidemil.training.config import TrainConfig
from slidemil.training.data import SlideBagDataset, SlideRef, SlideSource, balanced_sampler, one_slide
from slidemil.training.module import MethodModule

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
        if self.sink is not None and trainer.is_global_zero:
            self.sink({k: v for k, v in row.items() if k != "epoch"}, trainer.current_epoch)


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    monitor: str
    best_score: float  # the monitored validation metric at the selected checkpoint
    best_val_loss: float
    epochs_run: int
    world_size: int  # processes that trained the fold (2+ = DDP)
    state_dict: dict
    predictions: pd.DataFrame
    history: list[dict] = field(default_factory=list)


def predict_slides(method: Method, model: torch.nn.Module, dataset: SlideBagDataset, class_names: list[str],
                   split: str) -> pd.DataFrame:
    """Per-slide probabilities (eval mode, no grad) as rows ``slide_id, split, label, pred, label_name,
    pred_name, prob_<class>`` (label and pred are class indices, the ``_name`` columns the class names)
    (plus ``vote``, the majority vote over bags, for methods that vote)."""
    model.eval()
    rows = []
    for i in range(len(dataset)):
        slide = dataset.slide(i)
        pred = method.predict(model, slide)
        probs = pred.probs
        pred_index = int(probs.argmax())
        row = {"slide_id": slide.slide_id, "split": split, "label": slide.label, "pred": pred_index,
               "label_name": class_names[slide.label], "pred_name": class_names[pred_index]}
        if pred.vote_index is not None:  # methods voting over several bags (MSA): the majority vote too
            row["vote"] = pred.vote_index
        row.update({f"prob_{c}": float(p) for c, p in zip(class_names, probs, strict=True)})
        rows.append(row)
    return pd.DataFrame(rows)


def train_fold(
    fold: int,
    method: Method,
    splits: dict[str, list[SlideRef]],
    source: SlideSource,
    cfg: TrainConfig,
    class_names: list[str],
    *,
    metric_sink=None,
    workdir: str | Path | None = None,
    extra_callbacks: list[Callback] | None = None,
) -> FoldResult | None:
    """Fit on ``splits['train']``, select on ``splits['val']``, predict val and test with the best checkpoint.

    Returns None on the non-zero ranks of a distributed run.
    """
    for part in ("train", "val"):
        if not splits.get(part):
            raise ValueError(f"fold {fold} has no {part} slides: each class needs at least 3 cases (patients) "
                             "for grouped train/val/test splits")
    if cfg.num_threads and cfg.accelerator in ("auto", "cpu"):
        torch.set_num_threads(cfg.num_threads)
    L.seed_everything(cfg.seed + fold, workers=True, verbose=False)
    train_ds = SlideBagDataset(splits["train"], source, method, training=True, seed=cfg.seed + fold)
    val_ds = SlideBagDataset(splits["val"], source, method, training=False)
    sampler = balanced_sampler(splits["train"], cfg.seed + fold) if cfg.balanced_sampling else None
    train_dl = DataLoader(train_ds, batch_size=1, shuffle=sampler is None, sampler=sampler, collate_fn=one_slide,
                          generator=torch.Generator().manual_seed(cfg.seed + fold))
    val_dl = DataLoader(val_ds, batch_size=1, shuffle=False, collate_fn=one_slide)
    module = MethodModule(method, lr=cfg.lr, weight_decay=cfg.weight_decay)
    method.fit_data_statistics(module.model, train_ds.slides())
    history = EpochHistory(metric_sink)
    monitor, mode = method.monitor, method.mode
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        ckpt = ModelCheckpoint(dirpath=tmp, monitor=monitor, mode=mode, save_top_k=1, filename="best")
        trainer = L.Trainer(
            max_epochs=cfg.max_epochs,
            min_epochs=min(cfg.min_epochs, cfg.max_epochs),
            accelerator=cfg.accelerator,
            devices=cfg.devices,
            strategy=cfg.strategy,
            callbacks=[EarlyStopping(monitor, patience=cfg.patience, mode=mode), ckpt, history,
                       *(extra_callbacks or [])],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=True,
            num_sanity_val_steps=0,
            deterministic=cfg.deterministic,
            default_root_dir=tmp,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            trainer.fit(module, train_dl, val_dl)
        if not trainer.is_global_zero:
            return None
        world_size = trainer.world_size
        model = method.build_model()
        state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    model = model.cpu().eval()
    preds = pd.concat(
        [predict_slides(method, model, SlideBagDataset(splits[s], source, method, training=False), class_names, s)
         for s in ("val", "test") if splits.get(s)],
        ignore_index=True,
    )
    preds.insert(0, "fold", fold)
    pick = min if mode == "min" else max
    scored = [r for r in history.rows if monitor in r]
    best_row = pick(scored, key=lambda r: r[monitor]) if scored else {}
    return FoldResult(
        fold=fold,
        best_epoch=int(best_row.get("epoch", -1)),
        monitor=monitor,
        best_score=float(ckpt.best_model_score) if ckpt.best_model_score is not None else float("nan"),
        best_val_loss=float(best_row.get("val_loss", float("nan"))),
        epochs_run=len(history.rows),
        world_size=world_size,
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        predictions=preds,
        history=history.rows,
    )
