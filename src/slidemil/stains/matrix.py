"""The fitted stain matrix of one slide and the standard H&E reference used as fallback and default target."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

FITTED = "fitted"
FALLBACK = "fallback"
#: the widely used H&E reference of Macenko-style normalisers (unit OD vectors, rows H then E, RGB order)
_REFERENCE_VECTORS = ((0.5626, 0.7201, 0.4062), (0.2159, 0.8012, 0.5581))
#: and its stain maxima (99th-percentile concentrations of the reference image)
_REFERENCE_MAX = (1.9705, 1.0308)


@dataclass(frozen=True, eq=False)
class StainMatrix:
    """Unit optical-density vectors of hematoxylin (row 0) and eosin (row 1), and the slide's stain maxima."""

    vectors: np.ndarray  # (2, 3) float64, unit rows, RGB order
    max_concentrations: np.ndarray  # (2,) float64, per-slide max_percentile of each concentration
    source: str  # FITTED or FALLBACK
    n_pixels: int  # sampled tissue pixels the fit used (0 for the plain reference)

    def __post_init__(self) -> None:
        vectors = np.array(self.vectors, dtype=np.float64)
        maxima = np.array(self.max_concentrations, dtype=np.float64)
        if vectors.shape != (2, 3) or maxima.shape != (2,):
            raise ValueError(f"stain matrix needs vectors (2, 3) and max_concentrations (2,), got "
                             f"{vectors.shape} and {maxima.shape}")
        if not (np.isfinite(vectors).all() and np.isfinite(maxima).all()) or (maxima <= 0).any():
            raise ValueError("stain matrix values must be finite and the maxima positive")
        norms = np.linalg.norm(vectors, axis=1)
        if not np.allclose(norms, 1.0, atol=1e-6):
            raise ValueError(f"stain vectors must have unit length, got norms {norms.tolist()}")
        if self.source not in (FITTED, FALLBACK):
            raise ValueError(f"stain matrix source must be {FITTED!r} or {FALLBACK!r}, got {self.source!r}")
        vectors.setflags(write=False)
        maxima.setflags(write=False)
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "max_concentrations", maxima)
        object.__setattr__(self, "n_pixels", int(self.n_pixels))

    def to_dict(self) -> dict[str, Any]:
        return {"vectors": self.vectors.tolist(), "max_concentrations": self.max_concentrations.tolist(),
                "source": self.source, "n_pixels": self.n_pixels}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StainMatrix:
        keys = {"vectors", "max_concentrations", "source", "n_pixels"}
        if set(d) != keys:
            raise ValueError(f"stain matrix keys must be {sorted(keys)}, got {sorted(d)}")
        return cls(np.asarray(d["vectors"]), np.asarray(d["max_concentrations"]), str(d["source"]),
                   int(d["n_pixels"]))


def reference_matrix(n_pixels: int = 0) -> StainMatrix:
    """The standard H&E matrix (``source="fallback"``): what a slide without enough tissue gets, and the
    default target of :func:`~slidemil.stains.normalise`."""
    vectors = np.asarray(_REFERENCE_VECTORS)
    return StainMatrix(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), np.asarray(_REFERENCE_MAX),
                       FALLBACK, n_pixels)
