"""QC overlay of a slide's segments: each tile painted in the colour of its smallest segment over the
thumbnail, tiles in no segment grey, so a reviewer sees at a glance whether regions follow the tissue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from slidemil.segmenters.segments import Segments
from slidemil.utils.atomic import atomic_path


def group_colours(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) uint8 distinct-looking colours (random hues, high saturation), reproducible."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 230, size=(n, 3)).astype(np.uint8)


def segment_overlay(thumbnail: np.ndarray, downsample: float, coords: np.ndarray, tile_level0_px: float,
                    segments: Segments, alpha: float = 0.5) -> np.ndarray:
    """The thumbnail (h, w, 3) with every tile blended with its smallest group's colour."""
    out = thumbnail.astype(np.float32).copy()
    colours = group_colours(segments.n_groups).astype(np.float32)
    if segments.unsegmented >= 0:
        colours[segments.unsegmented] = 128.0
    group = segments.smallest_group()
    h, w = out.shape[:2]
    for (x, y), g in zip(np.asarray(coords), group, strict=True):
        c0, r0 = int(x / downsample), int(y / downsample)
        c1 = min(w, max(c0 + 1, int((x + tile_level0_px) / downsample)))
        r1 = min(h, max(r0 + 1, int((y + tile_level0_px) / downsample)))
        out[r0:r1, c0:c1] = (1 - alpha) * out[r0:r1, c0:c1] + alpha * colours[g]
    return np.clip(out, 0, 255).astype(np.uint8)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return Path(path)
