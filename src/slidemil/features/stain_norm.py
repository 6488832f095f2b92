"""Optional stain normalisation of tiles before encoding (Macenko, :mod:`slidemil.stains`).

A bundle that records ``components.stain_fitter = {"name": "macenko", "normalise": true, "target": ...,
"fit": ...}`` has every slide's tiles re-expressed with the target stain matrix before its encoders see them:
each slide's own matrix is fitted on its tissue tiles (the stains stage's :func:`fit_slide_stains`), then
:func:`slidemil.stains.normalise` maps its colours to the target. Serving and the external stage apply it
through :class:`slidemil.inference.SlidePredictor`; bundles without the record encode raw tiles (the default).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from slidemil.stains import StainConfig, StainMatrix, fit_slide_stains, normalise
from slidemil.stains.matrix import FITTED

NAME = "macenko"


@dataclass(frozen=True)
class StainNormalisation:
    target: StainMatrix
    fit: StainConfig
    target_name: str = "reference"  # where the target came from (the report says it)

    def to_component(self) -> dict[str, Any]:
        return {"name": NAME, "normalise": True, "target": self.target.to_dict(), "target_name": self.target_name,
                "fit": self.fit.to_dict()}

    @classmethod
    def from_component(cls, d: dict[str, Any] | None) -> StainNormalisation | None:
        """The bundle's record, or None when it asks for no normalisation."""
        if not d or not d.get("normalise"):
            return None
        if d.get("name") != NAME:
            raise ValueError(f"unknown stain normaliser {d.get('name')!r} (this slidemil has {NAME!r})")
        return cls(StainMatrix.from_dict(d["target"]), StainConfig.from_dict(d.get("fit") or {}),
                   str(d.get("target_name", "reference")))

    def for_slide(self, reader, coords: np.ndarray, geometry) -> Callable[[np.ndarray], np.ndarray]:
        """The tile transform of one slide: its own matrix (fitted on ``coords``) -> the target."""
        source = fit_slide_stains(reader, coords, geometry, self.fit)
        return lambda rgb: normalise(rgb, source, self.target)


def median_matrix(matrices: Sequence[StainMatrix]) -> StainMatrix:
    """A cohort's typical stain: the per-component median of its slides' vectors (renormalised) and maxima."""
    if not matrices:
        raise ValueError("no stain matrices to take the median of (run the stains stage)")
    vectors = np.median(np.stack([m.vectors for m in matrices]), axis=0)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    maxima = np.median(np.stack([m.max_concentrations for m in matrices]), axis=0)
    return StainMatrix(vectors, maxima, FITTED, int(sum(m.n_pixels for m in matrices)))
