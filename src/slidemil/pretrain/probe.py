"""Tile-level linear probe: how well a frozen encoder's features separate the slide classes (issue #8's check
that Stage 1 beats the encoder it started from at the same feature size).

Every tile carries its slide's label (weak: a tumour slide's normal tiles count as tumour), a logistic
regression is fitted on the features of the fit slides' tiles and scored on the validation slides' tiles, so
the figure compares encoders on identical tiles, not absolute quality.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from slidemil.encoders import Encoder
from slidemil.pretrain.data import MultiScaleSlide, TileReader


def probe_tiles(slides: Sequence[MultiScaleSlide], n_tiles: Sequence[int], per_slide: int,
                rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to ``per_slide`` random ``tiles`` rows of each slide, as (slide index, row)."""
    picks = []
    for i, n in enumerate(n_tiles):
        rows = rng.choice(n, size=min(per_slide, n), replace=False) if n else []
        picks += [(i, int(r)) for r in rows]
    return picks


def embed_tiles(encoder: Encoder, read: TileReader, picks: Sequence[tuple[int, int]],
                batch_size: int = 32) -> np.ndarray:
    """Eval-mode features (as the features stage computes them) of the picked tiles."""
    encoder.eval()
    out = []
    for start in range(0, len(picks), batch_size):
        chunk = picks[start:start + batch_size]
        tiles = torch.from_numpy(np.stack([read(i, "tiles", r) for i, r in chunk]))
        out.append(encoder.embed(tiles).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.feature_dim), dtype=np.float32)


def linear_probe_auc(fit_x: np.ndarray, fit_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray) -> float:
    """Validation AUC of a standardised logistic regression (macro one-vs-rest over the classes present);
    NaN when the validation tiles hold fewer than two classes."""
    present = np.unique(val_y)
    if present.size < 2 or np.unique(fit_y).size < 2:
        return float("nan")
    scaler = StandardScaler().fit(fit_x)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(fit_x), fit_y)
    proba = clf.predict_proba(scaler.transform(val_x))
    cols = {c: k for k, c in enumerate(clf.classes_)}
    if present.size == 2:
        return float(roc_auc_score(val_y == present[1], proba[:, cols[present[1]]]))
    aucs = [roc_auc_score(val_y == c, proba[:, cols[c]]) for c in present if c in cols]
    return float(np.mean(aucs))
