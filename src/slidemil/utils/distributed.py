"""Which process am I among many: rank and world size from ``torchrun`` or SLURM, and torch.distributed around it.

Stages that shard work (feature extraction) run unchanged as one process, under ``torchrun --nproc-per-node N``
(``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``) or under ``srun`` in an sbatch job
(``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``; the job script exports ``MASTER_ADDR``/``MASTER_PORT``).
The process group only carries small Python objects (what each rank did) and barriers, so the same code serves
gloo on CPUs and NCCL on GPUs.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

#: (rank, world size, local rank, processes on this node) variables of each launcher, tried in this order
_LAUNCHERS = (("torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
              ("slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"))


@dataclass(frozen=True)
class Ranks:
    """This process's place in a job: ``rank`` of ``world_size`` processes, ``local_rank`` of ``local_world_size``
    on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "single"
    local_world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(f"rank {self.rank} / local rank {self.local_rank} do not fit world size "
                             f"{self.world_size} (launcher: {self.launcher})")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share: items ``rank, rank + world_size, ...`` (deterministic, disjoint, covers all)."""
        return list(items[self.rank :: self.world_size])

    def device(self, device: str) -> str:
        """``auto``/``cuda`` mean this rank's own GPU (``cuda:<local_rank>``) when GPUs exist; else ``device``."""
        if device in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return "cpu" if device == "auto" else device


def ranks_from_env(env: Mapping[str, str] | None = None) -> Ranks:
    """The job layout the launcher put in the environment (torchrun first, then SLURM); one process otherwise."""
    env = os.environ if env is None else env
    for launcher, rank, world, local, per_node in _LAUNCHERS:
        if env.get(world):
            n_local = re.match(r"\d+", env.get(per_node) or env[world])  # SLURM may say "4(x2)"
            return Ranks(int(env.get(rank, "0")), int(env[world]), int(env.get(local, "0")), launcher,
                         int(n_local.group()) if n_local else 1)
    return Ranks()


@contextlib.contextmanager
def process_group(ranks: Ranks, device: str = "cpu", timeout_s: float = 3600) -> Iterator[None]:
    """Join the job's process group for the block (nothing to do for one process).

    NCCL when every rank on a node has a GPU of its own, gloo otherwise (on CPUs, or ranks sharing a GPU, which
    NCCL refuses; the group carries only small objects, so gloo costs nothing there). ``timeout_s`` bounds how long a barrier waits for the
    slowest rank (a long shard of big slides), so keep it above one rank's share of the work.
    """
    if ranks.world_size == 1 or dist.is_initialized():
        yield
        return
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise RuntimeError(f"rank {ranks.rank} of {ranks.world_size} ({ranks.launcher}): {', '.join(missing)} not "
                           "set; torchrun sets them, an sbatch script must export them (docs/scaling.md)")
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(device))
    own_gpu = cuda and ranks.local_world_size <= torch.cuda.device_count()
    dist.init_process_group("nccl" if own_gpu else "gloo", init_method="env://", rank=ranks.rank,
                            world_size=ranks.world_size, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if dist.is_initialized():
        dist.barrier()


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` for one process."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
