"""Applying a slide's stain matrix to pixels: concentrations, OD reconstruction, the 8-bit H and E images the
CLASS-M encoders read, and Macenko normalisation of one slide's colours to a reference matrix."""

from __future__ import annotations

import numpy as np

from slidemil.stains.fit import I0, optical_density
from slidemil.stains.matrix import StainMatrix


def concentrations(rgb: np.ndarray, matrix: StainMatrix) -> np.ndarray:
    """(H, W, 2) float32 H and E concentrations: the least-squares solution of OD = C @ vectors per pixel
    (``pinv`` of the 3 x 2 stain matrix; the residual off the H/E plane is discarded)."""
    od = optical_density(rgb)
    return (od @ np.linalg.pinv(matrix.vectors)).astype(np.float32)


def reconstruct_od(conc: np.ndarray, matrix: StainMatrix) -> np.ndarray:
    """(H, W, 3) optical density explained by ``conc`` under ``matrix``."""
    return np.asarray(conc, dtype=np.float64) @ matrix.vectors


def separate(rgb: np.ndarray, matrix: StainMatrix) -> tuple[np.ndarray, np.ndarray]:
    """8-bit H and E images: clip(C / (2 max_C), 0, 1) * 255, so the slide's 99th-percentile stain maps to
    mid-grey and tiles of one slide share one scale."""
    conc = concentrations(rgb, matrix)
    scaled = np.clip(conc / (2.0 * matrix.max_concentrations.astype(np.float32)), 0.0, 1.0)
    images = np.rint(scaled * 255.0).astype(np.uint8)
    return images[..., 0], images[..., 1]


def normalise(rgb: np.ndarray, source: StainMatrix, target: StainMatrix) -> np.ndarray:
    """Macenko normalisation: re-express ``rgb`` (stained as ``source`` says) with ``target``'s stain vectors
    and maxima; returns uint8 RGB of the same shape. Light missing from the H/E plane is dropped."""
    conc = concentrations(rgb, source).astype(np.float64)
    conc *= target.max_concentrations / source.max_concentrations
    od = reconstruct_od(conc, target)
    return np.clip(np.rint(I0 * np.power(10.0, -od)), 0, 255).astype(np.uint8)
