"""Typed training settings (methods.md section A), built from params.yaml by the train stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slidemil.utils.config import StrictConfig


@dataclass(frozen=True)
class TrainConfig(StrictConfig):
    """Paper defaults: Adam lr 2e-4, wd 1e-5, up to 200 epochs, early stopping on val loss with patience 20,
    not before epoch 50, best-val-loss checkpoint, optional class-balanced sampling."""

    lr: float = 2e-4
    weight_decay: float = 1e-5
    max_epochs: int = 200
    patience: int = 20
    min_epochs: int = 50
    balanced_sampling: bool = True
    seed: int = 0
    accelerator: str = "auto"
    devices: Any = "auto"
    #: Lightning strategy: "auto" (one device), "ddp" for several processes / GPUs (metrics are gathered
    #: across ranks; only rank 0 writes files and MLflow runs)
    strategy: str = "auto"
    deterministic: bool = True
    #: CPU threads for training. MIL bags are small: one thread is fastest, and more threads spin-wait
    #: against other processes (several times slower on a busy 2-core machine). null = torch's default.
    num_threads: int | None = 1
