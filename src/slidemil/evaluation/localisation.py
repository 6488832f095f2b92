"""Does attention point at the tumour? Tile-level AUROC of scores against a ground-truth region mask.

Each tile gets the exact fraction of its footprint inside the mask (an integral image, interpolated
bilinearly so tiles that cover only parts of mask pixels are still measured by area), and a tile counts as
tumour when that fraction reaches a threshold.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def integral_image(mask: np.ndarray) -> np.ndarray:
    """S[y, x] = sum of mask[:y, :x]; shape (h + 1, w + 1), float64."""
    m = np.asarray(mask, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {m.shape}")
    s = np.zeros((m.shape[0] + 1, m.shape[1] + 1), dtype=np.float64)
    s[1:, 1:] = m.cumsum(axis=0).cumsum(axis=1)
    return s


def _integral_at(s: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask area in [0, x) x [0, y) for real-valued x, y (mask pixels as unit squares; outside = 0).

    For a piecewise-constant image the area integral is bilinear inside each pixel, so bilinear
    interpolation of the integral image is exact.
    """
    h, w = s.shape[0] - 1, s.shape[1] - 1
    x = np.clip(x, 0.0, w)
    y = np.clip(y, 0.0, h)
    x0 = np.minimum(np.floor(x).astype(np.intp), max(w - 1, 0))
    y0 = np.minimum(np.floor(y).astype(np.intp), max(h - 1, 0))
    fx, fy = x - x0, y - y0
    x1, y1 = np.minimum(x0 + 1, w), np.minimum(y0 + 1, h)
    top = s[y0, x0] * (1 - fx) + s[y0, x1] * fx
    bottom = s[y1, x0] * (1 - fx) + s[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def tile_tumour_fraction(
    coords: np.ndarray, level0_px: float, tumour_mask: np.ndarray, mask_downsample: float
) -> np.ndarray:
    """Fraction (0..1) of each tile's level-0 footprint inside ``tumour_mask``.

    ``tumour_mask`` is boolean with ``mask_downsample`` level-0 px per mask px; parts of a tile beyond
    the mask count as not tumour.
    """
    if mask_downsample <= 0 or level0_px <= 0:
        raise ValueError("mask_downsample and level0_px must be positive")
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    s = integral_image(np.asarray(tumour_mask, dtype=bool))
    x0, y0 = c[:, 0] / mask_downsample, c[:, 1] / mask_downsample
    side = level0_px / mask_downsample
    x1, y1 = x0 + side, y0 + side
    area = _integral_at(s, x1, y1) - _integral_at(s, x0, y1) - _integral_at(s, x1, y0) + _integral_at(s, x0, y0)
    return np.clip(area / (side * side), 0.0, 1.0)


def localisation_auroc(scores: np.ndarray, fractions: np.ndarray, threshold: float = 0.5) -> float | None:
    """ROC AUC of ``scores`` for tiles with ``fractions >= threshold``; None when only one class is present.

    Tiles with a non-finite score or fraction are ignored.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    f = np.asarray(fractions, dtype=np.float64).ravel()
    if s.shape != f.shape:
        raise ValueError(f"{s.shape[0]} scores but {f.shape[0]} fractions")
    ok = np.isfinite(s) & np.isfinite(f)
    labels = f[ok] >= threshold
    if labels.size == 0 or labels.all() or not labels.any():
        return None
    return float(roc_auc_score(labels, s[ok]))


__all__ = ["integral_image", "localisation_auroc", "tile_tumour_fraction"]
