"""One slide's stain matrix from its tissue tiles, read one at a time (never a level-0 image whole).

The stage and serving both call :func:`fit_slide_stains`, so a new slide in serving gets exactly the matrix the
pipeline would have cached for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from slidemil.stains.config import StainConfig
from slidemil.stains.fit import fit_stain_matrix, sample_pixels
from slidemil.stains.matrix import StainMatrix

if TYPE_CHECKING:  # annotations only: importing the stain core must not load the slide backends
    from slidemil.slides.geometry import TileGeometry
    from slidemil.slides.reader import SlideReader


def fit_slide_stains(reader: SlideReader, coords: np.ndarray, geometry: TileGeometry,
                     config: StainConfig | None = None, *, name: str | None = None) -> StainMatrix:
    """Sample every ``config.sample_step``-th pixel of the tiles at ``coords`` (level-0 x, y, read with
    ``geometry``) and fit one matrix; ``max_tiles`` > 0 reads that many tiles evenly spread over the set."""
    cfg = config or StainConfig()
    chosen = sampled_tiles(len(coords), cfg.max_tiles)
    pixels = sample_pixels(_tiles(reader, np.asarray(coords)[chosen], geometry), cfg.sample_step)
    return fit_stain_matrix(pixels, cfg, name=name or reader.slide_id)


def sampled_tiles(n_tiles: int, max_tiles: int) -> np.ndarray:
    """Indices of the tiles a fit reads: all, or ``max_tiles`` evenly spaced ones (deterministic, no seed)."""
    if max_tiles <= 0 or n_tiles <= max_tiles:
        return np.arange(n_tiles)
    return np.unique(np.linspace(0, n_tiles - 1, max_tiles).round().astype(np.int64))


def _tiles(reader: SlideReader, coords: np.ndarray, geometry: TileGeometry) -> Iterator[np.ndarray]:
    for x, y in coords:
        yield reader.read_tile((int(x), int(y)), geometry)
