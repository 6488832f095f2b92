"""Pixel conversion and clipped reads shared by all backends: everything leaves a backend as RGB uint8."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Any gray / gray+alpha / RGB / RGBA array of any common dtype -> RGB uint8, alpha composited on white.

    White is what glass looks like, so transparent or padded areas read as background, never as black
    tissue-like pixels.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise ValueError(f"expected a 2-D or 3-D image array, got shape {a.shape}")
    a = scale_to_uint8(a)
    channels = a.shape[2]
    alpha = None
    if channels == 1:
        rgb = np.repeat(a, 3, axis=2)
    elif channels == 2:
        rgb, alpha = np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1]
    else:
        rgb = a[:, :, :3]
        alpha = a[:, :, 3] if channels >= 4 else None
    if alpha is not None and not np.all(alpha == 255):
        a16 = alpha.astype(np.uint16)[:, :, None]
        rgb = ((rgb.astype(np.uint16) * a16 + 255 * (255 - a16) + 127) // 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def scale_to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        scale = 255.0 if a.size and float(np.nanmax(a)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(a) * scale + 0.5, 0, 255).astype(np.uint8)
    # other integers: 8-bit content stored wide, else 16-bit range
    top = int(a.max()) if a.size else 0
    if top <= 255:
        return np.clip(a, 0, 255).astype(np.uint8)
    return ((np.clip(a, 0, 65535).astype(np.uint32) + 128) // 257).astype(np.uint8)


def white(h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), 255, np.uint8)


def paste_clipped(
    location: tuple[int, int],
    size: tuple[int, int],
    bounds: tuple[int, int],
    read: Callable[[int, int, int, int], np.ndarray],
) -> np.ndarray:
    """White canvas of ``size`` at ``location``; the part inside ``bounds`` (w, h) filled by ``read(x, y, w, h)``."""
    (x, y), (w, h), (bw, bh) = location, size, bounds
    out = white(h, w)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, bw), min(y + h, bh)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = read(x0, y0, x1 - x0, y1 - y0)
    return out
