"""A stain QC panel per slide: a few tiles as RGB | H | E, the 8-bit images the CLASS-M encoders see, so a
reviewer can tell at a glance whether nuclei landed in H and cytoplasm/stroma in E."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from slidemil.stains.matrix import StainMatrix
from slidemil.stains.separation import separate

_GAP = 4  # white pixels between tiles


def stain_qc_panel(tiles: Sequence[np.ndarray], matrix: StainMatrix) -> np.ndarray:
    """(rows * h, 3 * w) uint8 RGB: one row per tile, columns RGB, H, E (grey, bright = more stain)."""
    if not tiles:
        raise ValueError("stain QC needs at least one tile")
    rows = []
    for rgb in tiles:
        h, e = separate(rgb, matrix)
        cells = [rgb, np.repeat(h[..., None], 3, axis=2), np.repeat(e[..., None], 3, axis=2)]
        gap = np.full((rgb.shape[0], _GAP, 3), 255, np.uint8)
        rows.append(np.concatenate([cells[0], gap, cells[1], gap, cells[2]], axis=1))
        rows.append(np.full((_GAP, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)
