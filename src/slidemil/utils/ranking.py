"""Ranking tiles by score (top tiles for heatmaps, serving and the dashboard), NaN never ranked."""

from __future__ import annotations

import numpy as np


def ranked_indices(scores: np.ndarray, k: int, bottom: bool = False) -> np.ndarray:
    """Indices of the ``k`` highest (or lowest) finite scores, best first; ties keep tile order."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    idx = np.flatnonzero(np.isfinite(s))
    order = np.argsort(s[idx] if bottom else -s[idx], kind="stable")
    return idx[order[: max(0, int(k))]]
