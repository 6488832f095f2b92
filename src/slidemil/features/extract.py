"""Tile features for whole slides: read tiles in worker processes, encode in batches, store per slide.

The usual complaint about feature extraction is an idle accelerator waiting on slide I/O. So tile reading and
JPEG decoding happen in DataLoader workers (each opens its own slide reader: readers hold C handles that
cannot be pickled or shared across processes), tiles travel as uint8 (4x less to copy than float) and
resizing/normalisation run batched on the encoder's device. Output is streamed into a temporary HDF5 file and
published atomically, and a slide whose output already matches (same tiles, encoder, weights and extraction
code) is skipped, so an interrupted run resumes where it stopped. Which tile sets are encoded is a parameter
(``tiles`` by default; multi-scale methods also need ``parents``); they share one file per slide and encoder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from slidemil.encoders.encoder import Encoder
from slidemil.slides.geometry import TileGeometry
from slidemil.slides.reader import SlideReader
from slidemil.slides.tile_set import TILES, TileSetLayer
from slidemil.store import versions
from slidemil.store.features import KIND as FEATURES_KIND
from slidemil.store.features import feature_writer
from slidemil.store.layers import is_current, read_layer_attrs
from slidemil.store.tile_sets import KIND as TILES_KIND
from slidemil.store.tile_sets import read_tile_set, tiles_digest
from slidemil.utils.hashing import config_hash

log = logging.getLogger(__name__)

ReaderFactory = Callable[[str, float], SlideReader]
#: tile-file attributes copied into the feature file besides the geometry
_COPIED_TILE_ATTRS = ("width", "height", "backend", "mpp_source")


def open_reader(slide_path: str, slide_mpp: float) -> SlideReader:
    """Default reader factory (module-level so it pickles into worker processes)."""
    from slidemil.slides.backends import open_slide

    return open_slide(slide_path, mpp=slide_mpp)


class TileDataset(Dataset):
    """Tiles of one slide as uint8 (tile_px, tile_px, 3) tensors, read exactly as the tile file planned them.

    The reader is opened lazily in whichever process reads (main or DataLoader worker) and never pickled.
    """

    def __init__(
        self,
        slide_path: str | os.PathLike,
        slide_mpp: float,
        coords: np.ndarray,
        geometry: TileGeometry,
        reader_factory: ReaderFactory = open_reader,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        self.slide_path = str(slide_path)
        self.transform = transform  # RGB -> RGB before encoding (a bundle's stain normalisation)
        self.slide_mpp = float(slide_mpp)
        self.coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        self.geometry = geometry
        self.reader_factory = reader_factory
        self._reader: SlideReader | None = None
        self._pid: int | None = None

    @classmethod
    def from_tiles(cls, tiles: TileSetLayer, reader_factory: ReaderFactory = open_reader) -> TileDataset:
        return cls(tiles.slide_path, tiles.geometry.slide_mpp, tiles.coords, tiles.geometry, reader_factory)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def __getitem__(self, i: int) -> torch.Tensor:
        x, y = self.coords[i]
        tile = self._get_reader().read_tile((int(x), int(y)), self.geometry)
        if self.transform is not None:
            tile = self.transform(tile)
        tile = np.ascontiguousarray(tile, dtype=np.uint8)
        return torch.from_numpy(tile if tile.flags.writeable else tile.copy())

    def _get_reader(self) -> SlideReader:
        # a forked worker must not reuse the parent's handle
        if self._reader is None or self._pid != os.getpid():
            self._reader = self.reader_factory(self.slide_path, self.slide_mpp)
            self._pid = os.getpid()
        return self._reader

    def close(self) -> None:
        if self._reader is not None and self._pid == os.getpid():
            self._reader.close()
        self._reader = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"], state["_pid"] = None, None
        return state


@dataclass
class ExtractionStats:
    """One slide: tiles encoded, wall time (reading + encoding + writing) and throughput."""

    n_tiles: int
    seconds: float
    tiles_per_s: float
    slide_id: str = ""
    skipped: bool = False
    out_path: str = ""


@dataclass
class ExtractionSummary:
    """Many slides: per-slide stats, and the slides that failed with their error messages."""

    stats: list[ExtractionStats] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def n_tiles(self) -> int:
        return sum(s.n_tiles for s in self.stats if not s.skipped)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stats if not s.skipped)

    @property
    def tiles_per_s(self) -> float:
        return self.n_tiles / self.seconds if self.seconds > 0 else 0.0


class FeatureExtractionError(RuntimeError):
    """Some slides failed; ``summary`` holds what succeeded and every failure."""

    def __init__(self, summary: ExtractionSummary):
        self.summary = summary
        lines = "\n".join(f"  {sid}: {msg}" for sid, msg in summary.failures.items())
        super().__init__(f"feature extraction failed for {len(summary.failures)} slide(s):\n{lines}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def encode_tiles(
    dataset: Dataset,
    encoder: Encoder,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    amp: bool = True,
    progress: bool = False,
    out: Any = None,
    desc: str = "",
) -> Any:
    """Encode every uint8 tile of ``dataset`` in order into float32 (N, d); returns ``out`` or a new array.

    ``out`` may be an array or an h5py dataset of shape (N, d) (so large slides stream to disk). The encoder
    is moved to ``device`` and set to eval mode; on CUDA it runs channels-last under fp16 autocast (when
    ``amp``), on CPU in fp32.
    """
    dev = resolve_device(device)
    n = len(dataset)  # type: ignore[arg-type]
    result = np.empty((n, encoder.feature_dim), np.float32) if out is None else out
    if n == 0:
        return result
    cuda = dev.type == "cuda"
    encoder.eval().to(dev)
    if cuda:
        encoder.to(memory_format=torch.channels_last)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=cuda,
        persistent_workers=False,
        # No worker_init_fn: the DataLoader already gives each worker one torch thread, and calling
        # cv2.setNumThreads in a forked worker deadlocks once the parent has used OpenCV's thread pool.
    )
    done = 0
    with (
        torch.inference_mode(),
        tqdm(total=n, unit="tile", desc=desc, disable=not progress, leave=False) as bar,
    ):
        for batch in loader:
            x = encoder.preprocess(batch.to(dev, non_blocking=cuda))
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with (
                torch.autocast("cuda", dtype=torch.float16, enabled=amp) if cuda else contextlib.nullcontext()
            ):
                y = encoder(x)
            if y.shape != (batch.shape[0], encoder.feature_dim):
                raise RuntimeError(
                    f"{encoder.name}: output shape {tuple(y.shape)} does not match feature_dim {encoder.feature_dim}"
                )
            result[done : done + y.shape[0]] = y.float().cpu().numpy()
            done += y.shape[0]
            bar.update(y.shape[0])
    if done != n:
        raise RuntimeError(f"encoded {done} tiles, expected {n}")
    return result


def _resume_key(tile_sets: Sequence[TileSetLayer], tile_key: str, encoder: Encoder) -> tuple[str, dict]:
    """The resume key of a feature file, and the readable parts it is made of (stored as attributes too)."""
    parts = {
        "tile_config_hash": tile_key,
        "encoder": encoder.name,
        "weights_id": encoder.weights_id,
        "feature_dim": encoder.feature_dim,
        "code_version": versions.feature_code_version(),
    }
    digests = {t.name: tiles_digest(t) for t in tile_sets}
    return config_hash(parts, digests), parts


def extract_slide_features(
    tile_h5: str | os.PathLike,
    encoder: Encoder,
    out_h5: str | os.PathLike,
    *,
    tile_sets: Sequence[str] = (TILES,),
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    amp: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    reader_factory: ReaderFactory = open_reader,
) -> ExtractionStats:
    """Encode every tile of the named ``tile_sets`` of one tile file into ``out_h5`` (one group per set; see
    :mod:`slidemil.store.features` for the layout).

    Skips (``skipped=True``) when ``out_h5`` is complete and was made from the same tiles with the same encoder,
    weights and extraction code, unless ``overwrite``. A tile set with no tiles gets an empty (0, d) group
    flagged ``empty=True``. ``n_tiles`` counts the tiles of every set encoded.
    """
    if not tile_sets or len(set(tile_sets)) != len(tile_sets):
        raise ValueError(f"tile_sets must name distinct tile sets, got {list(tile_sets)}")
    sets = [read_tile_set(tile_h5, name) for name in tile_sets]
    slide = read_layer_attrs(tile_h5, TILES_KIND)
    slide_id = str(slide["slide_id"])
    key, parts = _resume_key(sets, str(slide.get("resume_key", "")), encoder)
    n_total = sum(len(t) for t in sets)
    out_h5 = Path(out_h5)
    if not overwrite and is_current(out_h5, key, FEATURES_KIND):
        log.info("%s: features up to date in %s, skipping", slide_id, out_h5)
        return ExtractionStats(n_total, 0.0, 0.0, slide_id, skipped=True, out_path=str(out_h5))

    dev = resolve_device(device)
    attrs: dict[str, Any] = {**encoder.describe(), **parts}
    attrs.update({k: slide[k] for k in _COPIED_TILE_ATTRS if k in slide})
    attrs.update(
        slide_id=slide_id,
        slide_path=str(slide["slide_path"]),
        tile_file=str(tile_h5),
        device=dev.type,
        precision="float16-autocast" if (dev.type == "cuda" and amp) else "float32",
    )
    start = time.perf_counter()
    with feature_writer(out_h5, attrs, resume_key=key) as writer:
        for tiles in sets:
            group = {**tiles.geometry.as_attrs(), "tile_set": tiles.name, "tiles_digest": tiles_digest(tiles)}
            ds = writer.tile_set(tiles.name, tiles.coords, encoder.feature_dim, group)
            if len(tiles) == 0:
                log.warning("%s: tile set %r has no tiles; writing an empty (0, %d) group",
                            slide_id, tiles.name, encoder.feature_dim)
                continue
            dataset = TileDataset.from_tiles(tiles, reader_factory)
            try:
                encode_tiles(dataset, encoder, batch_size=batch_size, num_workers=num_workers, device=dev,
                             amp=amp, progress=progress, out=ds, desc=f"{slide_id}/{tiles.name}")
            finally:
                dataset.close()
    seconds = time.perf_counter() - start
    rate = n_total / seconds if seconds > 0 else 0.0
    log.info("%s: %d tiles in %.1f s (%.1f tiles/s) -> %s", slide_id, n_total, seconds, rate, out_h5)
    return ExtractionStats(n_total, seconds, rate, slide_id, out_path=str(out_h5))


def extract_many(
    tile_files: Iterable[str | os.PathLike],
    encoder: Encoder,
    out_dir: str | os.PathLike,
    *,
    allow_failures: bool = False,
    progress: bool = True,
    **kw: Any,
) -> ExtractionSummary:
    """Extract features for many tile files into ``out_dir/<slide_id>.h5`` (slide_id = tile file stem).

    A failing slide is logged and recorded, and the loop moves on; at the end
    :class:`FeatureExtractionError` lists every failure unless ``allow_failures``. ``kw`` goes to
    :func:`extract_slide_features`.
    """
    files: Sequence[Path] = [Path(p) for p in tile_files]
    summary = ExtractionSummary()
    out_dir = Path(out_dir)
    bar = tqdm(files, unit="slide", desc=f"features {encoder.name}", disable=not progress)
    for tile_h5 in bar:
        slide_id = tile_h5.stem
        try:
            st = extract_slide_features(tile_h5, encoder, out_dir / f"{slide_id}.h5", progress=progress, **kw)
        except Exception as exc:  # one bad slide must not stop a cohort
            summary.failures[slide_id] = f"{type(exc).__name__}: {exc}"
            log.error("%s: feature extraction failed: %s", slide_id, summary.failures[slide_id])
            continue
        summary.stats.append(st)
        if not st.skipped:
            bar.set_postfix(tiles_per_s=f"{st.tiles_per_s:.1f}")
    n_skipped = sum(s.skipped for s in summary.stats)
    log.info(
        "features %s: %d slides extracted (%d tiles, %.1f tiles/s), %d up to date, %d failed",
        encoder.name,
        len(summary.stats) - n_skipped,
        summary.n_tiles,
        summary.tiles_per_s,
        n_skipped,
        len(summary.failures),
    )
    if summary.failures:
        for sid, msg in summary.failures.items():
            log.error("failed: %s: %s", sid, msg)
        if not allow_failures:
            raise FeatureExtractionError(summary)
    return summary
