"""Does attention point at the tumour? Tile-level AUROC of scores against a ground-truth region mask.

Each tile gets the exact fraction of its footprint inside the mask (by area, partial mask pixels included,
as tiling measures tissue: :class:`~slidemil.slides.masks.MaskCoverage`), and a tile counts as tumour when
that fraction reaches a threshold.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from slidemil.slides.masks import MaskCoverage


def tile_tumour_fraction(
    coords: np.ndarray, level0_px: float, tumour_mask: np.ndarray, mask_downsample: float
) -> np.ndarray:
    """Fraction (0..1) of each tile's level-0 footprint inside ``tumour_mask``.

    ``tumour_mask`` is boolean with ``mask_downsample`` level-0 px per mask px; parts of a tile beyond
    the mask count as not tumour.
    """
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    return MaskCoverage(tumour_mask, mask_downsample).squares(c[:, 0], c[:, 1], level0_px)


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


__all__ = ["localisation_auroc", "tile_tumour_fraction"]
