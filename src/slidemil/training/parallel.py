"""Cross-validation folds trained side by side in forked processes, results identical to training them in turn.

Why: a MIL fold on CPU uses one thread well and more threads badly (small bags), so on an N-core machine
sequential folds leave N-1 cores idle. Each fold is already independent and seeded by its fold number
(:func:`slidemil.training.fold.train_fold`), so with the same thread count per fold the processes compute
bit-identical results. Workers are forked (the method and the slide source are inherited, never pickled:
sources may hold closures and caches); they only train and return results, the parent does all MLflow logging
and file writing in fold order, so every fold run still sits under its family's parent run.
Only for CPU training in one process per fold: DDP, GPUs (CUDA does not survive fork) and non-fork platforms
run sequentially.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from slidemil.methods import Method
from slidemil.training.config import TrainConfig
from slidemil.training.data import SlideRef, SlideSource
from slidemil.training.fold import FoldResult, train_fold
from slidemil.training.run_log import global_rank

log = logging.getLogger(__name__)

#: what forked workers inherit: set by FoldPool before the pool forks, read by _train_in_worker
_INHERITED: dict[str, Any] = {}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_parallel_folds(setting: int | str | None, cfg: TrainConfig, n_folds: int) -> int:
    """How many folds to train at once: ``auto`` = cores // threads per fold (at most the folds); an int is
    taken as is (capped at the folds). 1 wherever folds cannot run in separate processes."""
    if setting in (None, 1, "1"):
        return 1
    cpu_training = cfg.accelerator == "cpu" or (cfg.accelerator == "auto" and not torch.cuda.is_available())
    one_process = cfg.strategy in ("auto", "single_device") and cfg.devices in (1, "1", "auto")
    distributed = any(v in os.environ for v in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "WORLD_SIZE"))
    if not cpu_training or not one_process or distributed or global_rank() != 0 \
            or "fork" not in mp.get_all_start_methods():
        return 1
    if setting == "auto":
        n = available_cores() // max(1, cfg.num_threads or 1)
    else:
        n = int(setting)
        if n < 1:
            raise ValueError(f"parallel_folds must be 'auto' or >= 1, got {setting!r}")
    return max(1, min(n, n_folds))


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _train_in_worker(fold: int) -> FoldResult:
    """Train one fold in a worker; tensors go back as numpy (plain pickles, no shared-memory handles)."""
    d = _INHERITED
    res = train_fold(fold, d["method"], d["parts"][fold], d["source"], d["cfg"], d["class_names"])
    return replace(res, state_dict={k: v.numpy() for k, v in res.state_dict.items()})


class FoldPool:
    """Starts every fold on ``processes`` forked workers; :meth:`result` waits for one fold's result."""

    def __init__(self, processes: int, method: Method, parts: dict[int, dict[str, list[SlideRef]]],
                 source: SlideSource, cfg: TrainConfig, class_names: list[str]):
        _INHERITED.update(method=method, parts=parts, source=source, cfg=cfg, class_names=class_names)
        threads = cfg.num_threads or max(1, available_cores() // processes)
        log.info("training %d folds in %d processes, %d torch thread(s) each", len(parts), processes, threads)
        self._pool = ProcessPoolExecutor(processes, mp_context=mp.get_context("fork"),
                                         initializer=_init_worker, initargs=(threads,))
        self._futures: dict[int, Future] = {f: self._pool.submit(_train_in_worker, f) for f in parts}

    def result(self, fold: int) -> FoldResult:
        res = self._futures[fold].result()
        return replace(res, state_dict={k: torch.from_numpy(np.asarray(v)) for k, v in res.state_dict.items()})

    def close(self) -> None:
        for f in self._futures.values():
            f.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        _INHERITED.clear()

    def __enter__(self) -> FoldPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
