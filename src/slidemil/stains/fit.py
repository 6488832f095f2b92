"""Fitting one stain matrix from sampled pixels: optical density, the transparent-pixel cut, the eigen plane,
the extreme angles, and the fallback to the reference matrix when there is too little tissue."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from slidemil.stains.config import CHANNEL_CUT, StainConfig
from slidemil.stains.matrix import FITTED, StainMatrix, reference_matrix

log = logging.getLogger(__name__)
I0 = 255.0  # background intensity of every channel (8-bit white)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """OD = log10(I0 / max(I, 1)) per channel (float64, same shape); the floor of 1 keeps black pixels finite."""
    rgb = np.asarray(rgb)
    if rgb.shape[-1:] != (3,):
        raise ValueError(f"optical_density needs RGB values in the last axis, got shape {rgb.shape}")
    return np.log10(I0 / np.maximum(rgb.astype(np.float64), 1.0))


def sample_pixels(images: Iterable[np.ndarray], step: int) -> np.ndarray:
    """Every ``step``-th pixel in x and y of each (H, W, 3) uint8 image, stacked to (N, 3) uint8.

    Takes any iterable, so a slide's tiles can be streamed: only the samples are kept.
    """
    if step < 1:
        raise ValueError(f"sample step must be >= 1, got {step}")
    parts = []
    for image in images:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8 images, got {image.shape} {image.dtype}")
        parts.append(image[::step, ::step].reshape(-1, 3))
    return np.concatenate(parts) if parts else np.zeros((0, 3), np.uint8)


def fit_stain_matrix(pixels_rgb: np.ndarray, config: StainConfig | None = None, *, name: str = "") -> StainMatrix:
    """Macenko-style H and E vectors and stain maxima from (N, 3) uint8 pixels of one slide's tissue.

    Falls back to :func:`reference_matrix` (with a warning naming ``name``) when fewer than
    ``config.min_pixels`` pixels survive the transparent cut or the two fitted directions coincide.
    """
    cfg = config or StainConfig()
    pixels = np.asarray(pixels_rgb)
    if pixels.ndim != 2 or pixels.shape[1] != 3:
        raise ValueError(f"{name or 'stain fit'}: expected (N, 3) RGB pixels, got shape {pixels.shape}")
    od = optical_density(pixels)
    if cfg.transparent_cut == CHANNEL_CUT:
        tissue = od[(od > cfg.beta).all(axis=1)]
        if len(tissue) < cfg.min_pixels:
            return _fallback(name, f"{len(tissue)} tissue pixels (< min_pixels {cfg.min_pixels})", len(tissue))
        plane = _eigen_plane(tissue)
        xy = tissue @ plane.T
    else:
        plane = _eigen_plane(od) if len(od) >= 3 else np.eye(3)[:2]
        xy = od @ plane.T
        keep = (xy**2).sum(axis=1) >= cfg.beta**2
        tissue, xy = od[keep], xy[keep]
        if len(tissue) < cfg.min_pixels:
            return _fallback(name, f"{len(tissue)} tissue pixels (< min_pixels {cfg.min_pixels})", len(tissue))

    angles = np.arctan2(xy[:, 1], xy[:, 0])
    lo, hi = np.percentile(angles, [cfg.alpha_percentile, 100.0 - cfg.alpha_percentile])
    pair = np.stack([_direction(plane, lo), _direction(plane, hi)])
    vectors = pair if pair[0, 0] >= pair[1, 0] else pair[::-1]  # hematoxylin absorbs more red
    separation = np.degrees(np.arccos(np.clip(vectors[0] @ vectors[1], -1.0, 1.0)))
    if separation < cfg.min_angle_deg:
        return _fallback(name, f"H and E directions only {separation:.2f} deg apart", len(tissue))
    conc = tissue @ np.linalg.pinv(vectors)
    maxima = np.percentile(conc, cfg.max_percentile, axis=0)
    if (maxima <= 0).any():
        return _fallback(name, f"non-positive stain maxima {maxima.round(4).tolist()}", len(tissue))
    return StainMatrix(vectors, maxima, FITTED, len(tissue))


def _eigen_plane(od: np.ndarray) -> np.ndarray:
    """(2, 3) top two eigenvectors of the OD covariance, signs fixed so the fit is deterministic.

    The first points into the positive octant (OD of stained tissue is positive, so tissue projects onto it
    with x > 0 and the angles stay away from the +-pi wrap); the second has its largest component positive.
    """
    _, vecs = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = vecs[:, [2, 1]].T.copy()
    if plane[0].sum() < 0:
        plane[0] = -plane[0]
    if plane[1, np.argmax(np.abs(plane[1]))] < 0:
        plane[1] = -plane[1]
    return plane


def _direction(plane: np.ndarray, angle: float) -> np.ndarray:
    v = np.cos(angle) * plane[0] + np.sin(angle) * plane[1]
    v = v if v.sum() >= 0 else -v
    return v / np.linalg.norm(v)


def _fallback(name: str, why: str, n_pixels: int) -> StainMatrix:
    log.warning("%s: %s; using the reference H&E stain matrix", name or "stain fit", why)
    return reference_matrix(n_pixels)
