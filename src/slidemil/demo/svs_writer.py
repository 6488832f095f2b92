"""Stream a pyramidal, tiled, JPEG-compressed Aperio-style TIFF (``.svs``) that OpenSlide opens.

The image comes from a callback ``render(x0, y0, w, h) -> RGB uint8 (h, w, 3)`` in level-0 pixels,
called strip by strip, so no whole level-0 image is ever in memory. Reduced levels are exact 4x4
box averages of the rendered level 0 (what a scanner's pyramid is), built during the same pass:
each level's rows are appended to a raw temporary file as soon as four rows of the level above are
available, and written as their own TIFF pages after level 0. Peak memory is one level-0 strip plus
the renderer's working set, whatever the slide size.

OpenSlide's Aperio reader needs: every level as its own top-level page (reduced ones with
``subfiletype=1``; SubIFDs are ignored), ``Aperio ...|AppMag = ..|MPP = ..`` as the first page's
ImageDescription, and ``metadata=None`` so tifffile does not add a second description that hides it.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import tifffile

RenderFn = Callable[[int, int, int, int], np.ndarray]

APERIO_HEADER = "Aperio Image Library v12.0.0"


def pyramid_dimensions(
    width: int, height: int, min_level_px: int = 1024, factor: int = 4
) -> list[tuple[int, int]]:
    """(w, h) of each level: divide by ``factor`` until the longer side fits in ``min_level_px``."""
    dims = [(int(width), int(height))]
    while max(dims[-1]) > min_level_px:
        w, h = dims[-1]
        dims.append((math.ceil(w / factor), math.ceil(h / factor)))
    return dims


def app_mag_for_mpp(mpp: float) -> int:
    """Nominal objective power: 40x for ~0.25 um/px, 20x for ~0.5 um/px."""
    return max(1, round(10.0 / mpp))


def aperio_description(width: int, height: int, mpp: float, app_mag: float, tile: int, quality: int) -> str:
    return (
        f"{APERIO_HEADER}\r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) JPEG/RGB Q={quality}"
        f"|AppMag = {app_mag:g}|MPP = {mpp:.6g}|ScanScope ID = SLIDEMIL-SYNTHETIC"
    )


class _LevelSpool:
    """Receives rows of level l-1, writes their 4x4 averages (level l) to a raw file, feeds level l+1."""

    def __init__(self, path: Path, width_in: int, next_spool: _LevelSpool | None):
        self.path = path
        self.width_in = width_in
        self.width = math.ceil(width_in / 4)
        self.rows = 0
        self._fh = open(path, "wb")  # noqa: SIM115 - closed in flush()
        self._pending: np.ndarray | None = None
        self._next = next_spool

    def push(self, rows: np.ndarray) -> None:
        if self._pending is not None and len(self._pending):
            rows = np.concatenate([self._pending, rows])
        n4 = len(rows) // 4 * 4
        if n4:
            self._emit(rows[:n4])
        self._pending = rows[n4:].copy() if n4 < len(rows) else None

    def _emit(self, rows: np.ndarray) -> None:
        h, w = rows.shape[:2]
        if w % 4:
            rows = np.pad(rows, ((0, 0), (0, 4 - w % 4), (0, 0)), constant_values=255)
        small = cv2.resize(rows, (rows.shape[1] // 4, h // 4), interpolation=cv2.INTER_AREA)
        self._fh.write(np.ascontiguousarray(small).tobytes())
        self.rows += len(small)
        if self._next is not None:
            self._next.push(small)

    def flush(self) -> None:
        if self._fh.closed:
            return
        if self._pending is not None and len(self._pending):
            pad = 4 - len(self._pending) % 4
            self._emit(np.pad(self._pending, ((0, pad), (0, 0), (0, 0)), constant_values=255))
            self._pending = None
        self._fh.close()
        if self._next is not None:
            self._next.flush()

    def tiles(self, width: int, height: int, tile: int) -> Iterator[np.ndarray]:
        """Tiles of the spooled level cropped/padded to (width, height), row-major."""
        nx, ny = math.ceil(width / tile), math.ceil(height / tile)
        row_bytes = self.width * 3
        with open(self.path, "rb") as fh:
            for ty in range(ny):
                fh.seek(ty * tile * row_bytes)
                n_rows = max(0, min(tile, self.rows - ty * tile))
                band = np.frombuffer(fh.read(n_rows * row_bytes), np.uint8).reshape(n_rows, self.width, 3)
                full = np.full((tile, nx * tile, 3), 255, np.uint8)
                cols = min(self.width, nx * tile)
                full[:n_rows, :cols] = band[:, :cols]
                for tx in range(nx):
                    yield full[:, tx * tile : (tx + 1) * tile]


def write_aperio_svs(
    path: str | Path,
    render: RenderFn,
    width: int,
    height: int,
    *,
    mpp: float,
    app_mag: float | None = None,
    tile: int = 256,
    quality: int = 90,
    strip_px: int = 1024,
    block_px: int = 1024,
    strip_budget: int = 64 * 2**20,
    min_level_px: int = 1024,
    maxworkers: int = 1,
) -> list[tuple[int, int]]:
    """Render and write the slide to ``path`` atomically (temp name, then rename); returns level sizes."""
    path = Path(path)
    dims = pyramid_dimensions(width, height, min_level_px)
    app_mag = app_mag_for_mpp(mpp) if app_mag is None else app_mag
    nx, ny = math.ceil(width / tile), math.ceil(height / tile)
    padded_w = nx * tile
    # strips of at most ~strip_budget bytes keep memory flat for very wide slides
    strip_px = min(strip_px, strip_budget // (padded_w * 3))
    strip_px = max(tile, strip_px // tile * tile)
    block_px = max(tile, block_px // tile * tile)
    tmp_path = path.with_name(f".{path.name}.partial-{os.getpid()}")
    common = dict(
        dtype=np.uint8,
        photometric="rgb",
        tile=(tile, tile),
        compression="jpeg",
        compressionargs={"level": quality},
        metadata=None,
        maxworkers=maxworkers,
    )
    try:
        with tempfile.TemporaryDirectory(prefix=".spool-", dir=path.parent) as spool_dir:
            spools: list[_LevelSpool] = []
            nxt: _LevelSpool | None = None
            widths = [padded_w]
            for _ in dims[1:]:
                widths.append(math.ceil(widths[-1] / 4))
            for level in range(len(dims) - 1, 0, -1):
                nxt = _LevelSpool(Path(spool_dir) / f"level{level}.raw", widths[level - 1], nxt)
                spools.insert(0, nxt)

            def level0_tiles() -> Iterator[np.ndarray]:
                # spool each strip *before* yielding its tiles: tifffile stops pulling after the last tile
                for sy in range(0, ny * tile, strip_px):
                    sh = min(strip_px, ny * tile - sy)
                    strip = np.empty((sh, padded_w, 3), np.uint8)
                    for sx in range(0, padded_w, block_px):
                        bw = min(block_px, padded_w - sx)
                        strip[:, sx : sx + bw] = render(sx, sy, bw, sh)
                    if spools:
                        spools[0].push(strip)
                        if sy + sh >= ny * tile:
                            spools[0].flush()
                    for ty in range(sh // tile):
                        for tx in range(nx):
                            yield strip[ty * tile : (ty + 1) * tile, tx * tile : (tx + 1) * tile]
                    del strip  # before the next strip is allocated: one strip in memory, not two

            with tifffile.TiffWriter(tmp_path, bigtiff=_needs_bigtiff(dims)) as tw:
                tw.write(
                    level0_tiles(),
                    shape=(height, width, 3),
                    description=aperio_description(width, height, mpp, app_mag, tile, quality),
                    **common,
                )
                for level, spool in enumerate(spools, start=1):
                    spool.flush()  # no-op unless level 0 ended early
                    w, h = dims[level]
                    if spool.rows < h:
                        raise RuntimeError(f"pyramid level {level} has {spool.rows} rows, expected {h}")
                    desc = (
                        f"{APERIO_HEADER}\r\n{width}x{height} [0,0 {width}x{height}] ({tile}x{tile}) "
                        f"-> {w}x{h} JPEG/RGB Q={quality}"
                    )
                    tw.write(
                        spool.tiles(w, h, tile), shape=(h, w, 3), subfiletype=1, description=desc, **common
                    )
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return dims


def _needs_bigtiff(dims: list[tuple[int, int]]) -> bool:
    # JPEG at Q90 stays far below raw size, but be safe well before the 4 GiB classic-TIFF limit
    raw = sum(w * h * 3 for w, h in dims)
    return raw > 6 * 2**30
