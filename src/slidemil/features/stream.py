"""One tile stream for a whole extraction run: every tile set of every slide, batched, read by worker processes.

Why one stream: a DataLoader per slide starts (and tears down) its workers per slide, and the encoder idles
while they start and while the last batches of a slide drain. Here one loader with persistent workers walks the
whole run, so the next slide's first batches are already read while the current slide's last batch encodes.

Each item is one whole batch of one tile set (never two slides in a batch, so a slide's output can be
published as soon as its last batch is encoded). A worker reads the batch itself (batch_size=None in the
DataLoader): one IPC message per batch instead of per tile. A failing read does not kill the stream: the item
carries the error, and the consumer fails that slide only.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from slidemil.slides.geometry import TileGeometry
from slidemil.slides.reader import SlideReader

ReaderFactory = Callable[[str, float], SlideReader]
#: slides a worker keeps open (batches of neighbouring slides interleave across workers at slide boundaries)
_OPEN_READERS = 2


@dataclass(frozen=True)
class TileSegment:
    """The tiles of one tile set of one slide, as the tile file planned them."""

    slide_path: str
    slide_mpp: float
    coords: np.ndarray
    geometry: TileGeometry


@dataclass(frozen=True)
class BatchTask:
    segment: int
    start: int
    stop: int


def plan_batches(segments: Sequence[TileSegment], batch_size: int) -> list[BatchTask]:
    """Every segment cut into batches of ``batch_size`` tiles, in segment order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [BatchTask(i, s, min(s + batch_size, len(seg.coords)))
            for i, seg in enumerate(segments) for s in range(0, len(seg.coords), batch_size)]


class TileBatches(Dataset):
    """Item ``i`` = ``{"task": i, "tiles": uint8 (B, tile_px, tile_px, 3), "error": str}`` of :attr:`tasks`.

    Readers are opened lazily in whichever process reads, never pickled, and a few stay open per process.
    """

    def __init__(self, segments: Sequence[TileSegment], tasks: Sequence[BatchTask], reader_factory: ReaderFactory):
        self.segments = list(segments)
        self.tasks = list(tasks)
        self.reader_factory = reader_factory
        self._readers: OrderedDict[str, SlideReader] = OrderedDict()
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, i: int) -> dict[str, Any]:
        task = self.tasks[i]
        seg = self.segments[task.segment]
        try:
            reader = self._reader(seg)
            tiles = np.stack([reader.read_tile((int(x), int(y)), seg.geometry)
                              for x, y in seg.coords[task.start:task.stop]])
            return {"task": i, "tiles": torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.uint8)), "error": ""}
        except Exception as exc:  # noqa: BLE001 - reported against the slide by the consumer
            return {"task": i, "tiles": torch.empty(0, dtype=torch.uint8), "error": f"{type(exc).__name__}: {exc}"}

    def _reader(self, seg: TileSegment) -> SlideReader:
        if self._pid != os.getpid():  # a forked worker must not reuse the parent's handles
            self._readers, self._pid = OrderedDict(), os.getpid()
        reader = self._readers.pop(seg.slide_path, None)
        if reader is None:
            reader = self.reader_factory(seg.slide_path, seg.slide_mpp)
        self._readers[seg.slide_path] = reader
        while len(self._readers) > _OPEN_READERS:
            self._readers.popitem(last=False)[1].close()
        return reader

    def close(self) -> None:
        if self._pid == os.getpid():
            for reader in self._readers.values():
                reader.close()
        self._readers = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"], state["_pid"] = OrderedDict(), None
        return state


def batch_loader(dataset: TileBatches, *, num_workers: int, pin_memory: bool, prefetch: int = 4) -> DataLoader:
    """The run's one loader: items in task order, ``prefetch`` batches read ahead per worker."""
    return DataLoader(
        dataset,
        batch_size=None,  # items already are batches
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=prefetch if num_workers > 0 else None,
        # No worker_init_fn: the DataLoader already gives each worker one torch thread, and calling
        # cv2.setNumThreads in a forked worker deadlocks once the parent has used OpenCV's thread pool.
    )
