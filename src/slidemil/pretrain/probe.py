"""Tile-level linear probe: how well a frozen encoder's features separate the classes (issue #8's check that
Stage 1 beats the encoder it started from at the same feature size).

Two labellings. The weak one (:func:`probe_tiles`, used inside :func:`slidemil.pretrain.pretrain`) gives every
tile its slide's label, so a tumour slide's normal tissue counts as tumour and the figure is mostly noise. The
ground-truth one (:func:`ground_truth_tile_labels`, used by the ``pretrain`` stage when the manifest has tumour
masks) keeps only tiles whose class is known: tumour tiles (>= 50 % of the footprint in the mask) take their
slide's class, every tile of a normal slide is normal, the rest is dropped. Either way a standardised logistic
regression is fitted on one set of slides' tiles and scored on other slides' tiles, identical for both encoders.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
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


def ground_truth_tile_labels(slide_label: int, normal_label: int, fractions: np.ndarray | None, n_tiles: int,
                             threshold: float = 0.5) -> np.ndarray:
    """Per tile: its known class, or -1 (dropped). A normal slide's tiles are all ``normal_label``; a tumour
    slide's tiles with ``fractions >= threshold`` (share of the footprint in the tumour mask) take
    ``slide_label``, the others are ambiguous (normal tissue or tumour border) and dropped, as are all tiles of
    a tumour slide without a mask (``fractions`` None)."""
    if slide_label == normal_label:
        return np.full(n_tiles, normal_label, dtype=np.int64)
    if fractions is None:
        return np.full(n_tiles, -1, dtype=np.int64)
    f = np.asarray(fractions, dtype=np.float64).ravel()
    if f.size != n_tiles:
        raise ValueError(f"{n_tiles} tiles but {f.size} tumour fractions")
    return np.where(np.isfinite(f) & (f >= threshold), slide_label, -1).astype(np.int64)


def tumour_grid(mask: np.ndarray, mask_downsample: float, level0_px: int, stride: int) -> np.ndarray:
    """Top-left level-0 corners of ``level0_px`` tiles on a ``stride`` grid over the mask's tumour bounding box
    (tiles may overlap): a tumour slide's few tiling-grid tumour tiles are too few for a probe, so it reads
    more, shifted, crops of the same tumour. Label them with :func:`ground_truth_tile_labels`."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    lo = np.floor(np.array([xs.min(), ys.min()]) * mask_downsample) - level0_px + stride
    hi = np.ceil((np.array([xs.max(), ys.max()]) + 1) * mask_downsample)
    gx, gy = (np.arange(max(0.0, lo[k]), hi[k], stride) for k in (0, 1))
    xx, yy = np.meshgrid(gx, gy)
    return np.stack([xx.ravel(), yy.ravel()], 1).astype(np.int64)


def balanced_picks(labels: Sequence[np.ndarray], per_class: int,
                   rng: np.random.Generator) -> tuple[list[tuple[int, int]], np.ndarray]:
    """(slide index, row) picks with as many tiles of every class present (the rarest class's count, at most
    ``per_class``), spread over the slides of each class in turn so one large slide does not fill its class;
    and their labels. Labels < 0 are never picked."""
    by_class: dict[int, list[list[tuple[int, int]]]] = {}
    for i, lab in enumerate(labels):
        for c in np.unique(lab[lab >= 0]):
            rows = rng.permutation(np.flatnonzero(lab == c))
            by_class.setdefault(int(c), []).append([(i, int(r)) for r in rows])
    if not by_class:
        return [], np.zeros(0, dtype=np.int64)
    n = min(per_class, *(sum(map(len, pools)) for pools in by_class.values()))
    picks: list[tuple[int, int]] = []
    y: list[int] = []
    for c in sorted(by_class):
        pools, taken, depth = by_class[c], [], 0
        while len(taken) < n:  # round-robin over the class's slides
            taken += [p[depth] for p in pools if depth < len(p)][: n - len(taken)]
            depth += 1
        picks += taken
        y += [c] * n
    return picks, np.asarray(y, dtype=np.int64)


def embed_tiles(encoder: Encoder, read: TileReader, picks: Sequence[tuple[int, int]],
                batch_size: int = 32, input_px: int | None = None) -> np.ndarray:
    """Eval-mode features of the picked tiles: as the features stage computes them, or with the tiles resized
    to ``input_px`` (the size Stage 1 trained at; a smaller size is cheaper)."""
    encoder.eval()
    px = int(input_px or encoder.input_px)
    mean = torch.tensor(encoder.mean).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for start in range(0, len(picks), batch_size):
            chunk = picks[start:start + batch_size]
            tiles = torch.from_numpy(np.stack([read(i, "tiles", r) for i, r in chunk]))
            if px == encoder.input_px:
                feats = encoder.embed(tiles)
            else:
                x = F.interpolate(tiles.permute(0, 3, 1, 2).float().div(255.0), size=(px, px), mode="bilinear",
                                  align_corners=False, antialias=True).clamp(0.0, 1.0)
                feats = encoder((x - mean) / std)
            out.append(feats.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.feature_dim), dtype=np.float32)


def linear_probe(fit_x: np.ndarray, fit_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray) -> dict[str, float]:
    """``auc`` (macro one-vs-rest over the classes present in ``val_y``) and ``balanced_accuracy`` of a
    standardised logistic regression fitted on (fit_x, fit_y); NaN when either side holds fewer than two
    classes."""
    present = np.unique(val_y)
    if present.size < 2 or np.unique(fit_y).size < 2:
        return {"auc": float("nan"), "balanced_accuracy": float("nan")}
    scaler = StandardScaler().fit(fit_x)
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(fit_x), fit_y)
    proba = clf.predict_proba(scaler.transform(val_x))
    cols = {c: k for k, c in enumerate(clf.classes_)}
    if present.size == 2:
        auc = float(roc_auc_score(val_y == present[1], proba[:, cols[present[1]]]))
    else:
        auc = float(np.mean([roc_auc_score(val_y == c, proba[:, cols[c]]) for c in present if c in cols]))
    pred = clf.classes_[proba.argmax(1)]
    return {"auc": auc, "balanced_accuracy": float(balanced_accuracy_score(val_y, pred))}


def linear_probe_auc(fit_x: np.ndarray, fit_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray) -> float:
    """:func:`linear_probe`'s AUC alone."""
    return linear_probe(fit_x, fit_y, val_x, val_y)["auc"]
