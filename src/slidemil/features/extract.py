"""Tile features for whole slides: read tiles in worker processes, encode in batches, store per slide.

The usual complaint about feature extraction is an idle accelerator (or CPU) waiting on slide I/O. So one
tile stream (:mod:`.stream`) covers the whole run: DataLoader workers that persist across slides read and
decode whole batches (each opens its own slide readers: readers hold C handles that cannot be pickled or
shared across processes), tiles travel as uint8 (4x less to copy than float), and resizing/normalisation run
batched on the encoder's device, in the layout and precision the hardware is fastest at
(:mod:`slidemil.encoders.precision`). Each slide's output is streamed into a temporary HDF5 file and
published atomically as soon as its last batch is encoded, and a slide whose output already matches (same
tiles, encoder, weights, precision and extraction code) is skipped, so an interrupted run resumes where it
stopped. Which tile sets are encoded is a parameter (``tiles`` by default; multi-scale methods also need
``parents``); they share one file per slide and encoder.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from slidemil.encoders.encoder import Encoder
from slidemil.encoders.precision import Precision, choose_precision, log_choice
from slidemil.features.stream import ReaderFactory, TileBatches, TileSegment, batch_loader, plan_batches
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

#: tile-file attributes copied into the feature file besides the geometry
_COPIED_TILE_ATTRS = ("width", "height", "backend", "mpp_source")


def open_reader(slide_path: str, slide_mpp: float) -> SlideReader:
    """Default reader factory (module-level so it pickles into worker processes)."""
    from slidemil.slides.backends import open_slide

    return open_slide(slide_path, mpp=slide_mpp)


class TileDataset(Dataset):
    """Tiles of one slide as uint8 (tile_px, tile_px, 3) tensors, read exactly as the tile file planned them.

    For callers that encode one slide they already hold open (serving); runs over many slides use the batched
    stream of :mod:`.stream`. The reader is opened lazily in whichever process reads and never pickled.
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
    """Many slides: per-slide stats, the slides that failed with their error messages, the precision used."""

    stats: list[ExtractionStats] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    precision: dict[str, Any] = field(default_factory=dict)

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


class TileReadError(RuntimeError):
    """Tiles of a slide could not be read (the worker's error, naming the slide)."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def prepare_encoder(encoder: Encoder, device: torch.device, precision: str = "fp32") -> Precision:
    """Move ``encoder`` to ``device`` in eval mode and the chosen memory layout; returns the precision to run."""
    prec = choose_precision(device, precision)
    log_choice(prec, encoder.name)
    encoder.eval().to(device)
    if prec.channels_last:
        encoder.to(memory_format=torch.channels_last)
    return prec


def encode_batch(encoder: Encoder, batch: torch.Tensor, device: torch.device, prec: Precision) -> np.ndarray:
    """float32 (B, d) features of one uint8 NHWC batch (encoder already prepared by :func:`prepare_encoder`)."""
    cuda = device.type == "cuda"
    fmt = torch.channels_last if prec.channels_last else torch.contiguous_format
    with torch.inference_mode():
        x = encoder.preprocess(batch.to(device, non_blocking=cuda), memory_format=fmt)
        with prec.autocast():
            y = encoder(x)
    if y.shape != (batch.shape[0], encoder.feature_dim):
        raise RuntimeError(
            f"{encoder.name}: output shape {tuple(y.shape)} does not match feature_dim {encoder.feature_dim}"
        )
    return y.float().cpu().numpy()


def encode_tiles(
    dataset: Dataset,
    encoder: Encoder,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    progress: bool = False,
    out: Any = None,
    desc: str = "",
) -> Any:
    """Encode every uint8 tile of ``dataset`` in order into float32 (N, d); returns ``out`` or a new array.

    ``out`` may be an array or an h5py dataset of shape (N, d). Runs channels-last, in ``precision``
    (auto | fp32 | bf16, see :func:`slidemil.encoders.precision.choose_precision`).
    """
    dev = resolve_device(device)
    n = len(dataset)  # type: ignore[arg-type]
    result = np.empty((n, encoder.feature_dim), np.float32) if out is None else out
    if n == 0:
        return result
    prec = prepare_encoder(encoder, dev, precision)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=dev.type == "cuda")
    done = 0
    with tqdm(total=n, unit="tile", desc=desc, disable=not progress, leave=False) as bar:
        for batch in loader:
            result[done : done + batch.shape[0]] = encode_batch(encoder, batch, dev, prec)
            done += batch.shape[0]
            bar.update(batch.shape[0])
    if done != n:
        raise RuntimeError(f"encoded {done} tiles, expected {n}")
    return result


def _resume_key(tile_sets: Sequence[TileSetLayer], tile_key: str, encoder: Encoder,
                precision: Precision) -> tuple[str, dict]:
    """The resume key of a feature file, and the readable parts it is made of (stored as attributes too)."""
    parts = {
        "tile_config_hash": tile_key,
        "encoder": encoder.name,
        "weights_id": encoder.weights_id,
        "feature_dim": encoder.feature_dim,
        "precision": precision.name,
        "code_version": versions.feature_code_version(),
    }
    digests = {t.name: tiles_digest(t) for t in tile_sets}
    return config_hash(parts, digests), parts


@dataclass
class _Job:
    """One slide to encode: its tile sets, output, resume key and attributes, and where its batches are."""

    slide_id: str
    out_h5: Path
    sets: list[TileSetLayer]
    key: str
    attrs: dict[str, Any]
    first_segment: int = 0
    n_batches: int = 0

    @property
    def n_tiles(self) -> int:
        return sum(len(t) for t in self.sets)


def _plan(tile_h5: Path, out_h5: Path, encoder: Encoder, tile_sets: Sequence[str], prec: Precision,
          overwrite: bool) -> _Job | ExtractionStats:
    sets = [read_tile_set(tile_h5, name) for name in tile_sets]
    slide = read_layer_attrs(tile_h5, TILES_KIND)
    slide_id = str(slide["slide_id"])
    key, parts = _resume_key(sets, str(slide.get("resume_key", "")), encoder, prec)
    if not overwrite and is_current(out_h5, key, FEATURES_KIND):
        log.info("%s: features up to date in %s, skipping", slide_id, out_h5)
        n = sum(len(t) for t in sets)
        return ExtractionStats(n, 0.0, 0.0, slide_id, skipped=True, out_path=str(out_h5))
    attrs: dict[str, Any] = {**encoder.describe(), **prec.describe(), **parts}
    attrs.update({k: slide[k] for k in _COPIED_TILE_ATTRS if k in slide})
    attrs.update(slide_id=slide_id, slide_path=str(slide["slide_path"]), tile_file=str(tile_h5),
                 device=prec.device)
    return _Job(slide_id, out_h5, sets, key, attrs)


def extract_run(
    pairs: Iterable[tuple[str | os.PathLike, str | os.PathLike]],
    encoder: Encoder,
    *,
    tile_sets: Sequence[str] = (TILES,),
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    progress: bool = True,
    overwrite: bool = False,
    reader_factory: ReaderFactory = open_reader,
) -> Iterator[tuple[str, ExtractionStats | Exception]]:
    """Encode each ``(tile_h5, out_h5)`` pair through one tile stream; yields ``(slide_id, stats or error)``
    per pair, in order, as soon as that slide's output is published (or has failed: nothing is left behind).

    ``num_workers`` reading processes persist for the whole run; ``precision``: auto | fp32 | bf16.
    """
    if not tile_sets or len(set(tile_sets)) != len(tile_sets):
        raise ValueError(f"tile_sets must name distinct tile sets, got {list(tile_sets)}")
    dev = resolve_device(device)
    prec = prepare_encoder(encoder, dev, precision)
    planned: list[tuple[str, _Job | ExtractionStats | Exception]] = []
    segments: list[TileSegment] = []
    for tile_h5, out_h5 in pairs:
        tile_h5, out_h5 = Path(tile_h5), Path(out_h5)
        try:
            item = _plan(tile_h5, out_h5, encoder, tile_sets, prec, overwrite)
        except Exception as exc:  # noqa: BLE001 - reported against this slide
            planned.append((tile_h5.stem, exc))
            continue
        if isinstance(item, _Job):
            item.first_segment = len(segments)
            segments.extend(TileSegment(t.slide_path, t.geometry.slide_mpp, t.coords, t.geometry)
                            for t in item.sets)
            item.n_batches = sum(-(-len(t) // batch_size) for t in item.sets)
        planned.append((tile_h5.stem, item))
    tasks = plan_batches(segments, batch_size)
    dataset = TileBatches(segments, tasks, reader_factory)
    loader = batch_loader(dataset, num_workers=min(num_workers, len(tasks)), pin_memory=dev.type == "cuda")
    stream = iter(loader) if tasks else iter(())
    total = sum(j.n_tiles for _, j in planned if isinstance(j, _Job))
    bar = tqdm(total=total, unit="tile", desc=f"features {encoder.name}", disable=not progress, leave=False)
    try:
        for slide_id, item in planned:
            if isinstance(item, _Job):
                item = _encode_job(item, stream, tasks, encoder, dev, prec, bar)
            yield slide_id, item
    finally:
        bar.close()
        del stream, loader  # the loader holds its persistent iterator: dropping both shuts the workers down
        dataset.close()


def _encode_job(job: _Job, stream: Iterator[dict], tasks: Sequence, encoder: Encoder, dev: torch.device,
                prec: Precision, bar: tqdm) -> ExtractionStats | Exception:
    """Consume exactly this job's batches from ``stream`` and publish its file; an error fails this job only."""
    start = time.perf_counter()
    error: Exception | None = None
    writer_cm = feature_writer(job.out_h5, job.attrs, resume_key=job.key)
    try:
        writer = writer_cm.__enter__()
    except Exception as exc:  # noqa: BLE001
        writer_cm, error = None, exc
    try:
        outputs = []
        if writer_cm is not None:
            for t in job.sets:
                group = {**t.geometry.as_attrs(), "tile_set": t.name, "tiles_digest": tiles_digest(t)}
                outputs.append(writer.tile_set(t.name, t.coords, encoder.feature_dim, group))
                if len(t) == 0:
                    log.warning("%s: tile set %r has no tiles; writing an empty (0, %d) group",
                                job.slide_id, t.name, encoder.feature_dim)
        for _ in range(job.n_batches):
            item = next(stream)  # always drained, so the next job starts at its own first batch
            if error is not None:
                continue
            try:
                if item["error"]:
                    raise TileReadError(f"{job.slide_id}: reading tiles failed: {item['error']}")
                task = tasks[item["task"]]
                outputs[task.segment - job.first_segment][task.start : task.stop] = encode_batch(
                    encoder, item["tiles"], dev, prec)
                bar.update(task.stop - task.start)
            except Exception as exc:  # noqa: BLE001
                error = exc
    except BaseException as exc:  # interrupted: discard the temporary file, then stop
        if writer_cm is not None:
            writer_cm.__exit__(type(exc), exc, exc.__traceback__)
        raise
    if writer_cm is not None:
        try:
            if error is None:
                writer_cm.__exit__(None, None, None)
            else:
                writer_cm.__exit__(type(error), error, error.__traceback__)
        except Exception as exc:  # noqa: BLE001
            error = error or exc
    if error is not None:
        return error
    seconds = time.perf_counter() - start
    rate = job.n_tiles / seconds if seconds > 0 else 0.0
    log.info("%s: %d tiles in %.1f s (%.1f tiles/s) -> %s", job.slide_id, job.n_tiles, seconds, rate, job.out_h5)
    return ExtractionStats(job.n_tiles, seconds, rate, job.slide_id, out_path=str(job.out_h5))


def extract_slide_features(
    tile_h5: str | os.PathLike,
    encoder: Encoder,
    out_h5: str | os.PathLike,
    **kw: Any,
) -> ExtractionStats:
    """Encode every tile of the named ``tile_sets`` of one tile file into ``out_h5`` (one group per set; see
    :mod:`slidemil.store.features` for the layout); ``kw`` as for :func:`extract_run`; errors are raised.

    Skips (``skipped=True``) when ``out_h5`` is complete and was made from the same tiles with the same encoder,
    weights, precision and extraction code, unless ``overwrite``. A tile set with no tiles gets an empty (0, d)
    group flagged ``empty=True``. ``n_tiles`` counts the tiles of every set encoded.
    """
    ((_, result),) = list(extract_run([(tile_h5, out_h5)], encoder, **kw))
    if isinstance(result, Exception):
        raise result
    return result


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

    One tile stream serves every slide (see :func:`extract_run`). A failing slide is logged and recorded, and
    the run moves on; at the end :class:`FeatureExtractionError` lists every failure unless
    ``allow_failures``. ``kw`` goes to :func:`extract_run`.
    """
    files: Sequence[Path] = [Path(p) for p in tile_files]
    out_dir = Path(out_dir)
    summary = ExtractionSummary()
    summary.precision = choose_precision(resolve_device(kw.get("device", "auto")),
                                         kw.get("precision", "fp32")).describe()
    bar = tqdm(total=len(files), unit="slide", desc=f"features {encoder.name}", disable=not progress)
    for slide_id, result in extract_run([(f, out_dir / f"{f.stem}.h5") for f in files], encoder,
                                        progress=progress, **kw):
        bar.update(1)
        if isinstance(result, Exception):  # one bad slide must not stop a cohort
            summary.failures[slide_id] = f"{type(result).__name__}: {result}"
            log.error("%s: feature extraction failed: %s", slide_id, summary.failures[slide_id])
            continue
        summary.stats.append(result)
        if not result.skipped:
            bar.set_postfix(tiles_per_s=f"{result.tiles_per_s:.1f}")
    bar.close()
    n_skipped = sum(s.skipped for s in summary.stats)
    log.info(
        "features %s (%s): %d slides extracted (%d tiles, %.1f tiles/s), %d up to date, %d failed",
        encoder.name,
        summary.precision.get("precision"),
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
