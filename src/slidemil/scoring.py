"""The one scoring path from a slide's layers to what users see: bag -> predict -> explain -> record.

The heatmaps stage, serving (slide and feature uploads), the CLI, the dashboard and the MLflow pyfunc all
call :func:`score_slide`, so a served prediction cannot drift from the pipeline's. Rendering a score layer
is :func:`slidemil.evaluation.heatmap.render_score_layer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from slidemil.bundle import ModelBundle
from slidemil.evaluation.calibration import apply_temperature
from slidemil.methods import Method, ScoreLayer, SlideData, TileSetView
from slidemil.utils.ranking import ranked_indices


@dataclass
class ScoredSlide:
    """A slide's prediction and its explanation (score layers over tile sets)."""

    slide_id: str
    probabilities: dict[str, float]
    label: str
    label_index: int
    layers: list[ScoreLayer]
    tile_sets: dict[str, TileSetView] = field(default_factory=dict)
    raw_probabilities: dict[str, float] | None = None  # before the bundle's temperature (None: same)

    @property
    def primary(self) -> ScoreLayer | None:
        """The layer painted by default (the method lists it first)."""
        return self.layers[0] if self.layers else None

    def layer(self, name: str) -> ScoreLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"{self.slide_id}: no score layer {name!r}; has {[la.name for la in self.layers]}")

    def top_tiles(self, k: int, layer: ScoreLayer | None = None) -> list[dict[str, Any]]:
        """The ``k`` highest-scoring tiles of a layer (default: the primary one) with their coordinates."""
        layer = layer or self.primary
        if layer is None:
            return []
        values = np.asarray(layer.values, dtype=np.float64)
        coords = self.tile_sets[layer.tile_set].coords
        order = ranked_indices(values, k)
        return [{"rank": r, "index": int(i), "x": int(coords[i][0]), "y": int(coords[i][1]),
                 "score": float(values[i])} for r, i in enumerate(order, start=1)]

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> ScoredSlide:
        """Inverse of :meth:`record` (its top tiles are recomputed from the layers, not read)."""
        probabilities = {str(k): float(v) for k, v in d["probabilities"].items()}
        tile_sets = {name: TileSetView(np.asarray(ts["coords"], dtype=np.int64).reshape(-1, 2), int(ts["level0_px"]))
                     for name, ts in d["tile_sets"].items()}
        label = str(d["label"])
        raw = d.get("raw_probabilities")
        return cls(str(d["slide_id"]), probabilities, label, list(probabilities).index(label),
                   [ScoreLayer.from_dict(la) for la in d["layers"]], tile_sets,
                   None if raw is None else {str(k): float(v) for k, v in raw.items()})

    def record(self, top_k: int = 5) -> dict[str, Any]:
        """Machine-readable record of the slide (what the heatmaps stage writes and the dashboard reads)."""
        return {
            "slide_id": self.slide_id,
            "label": self.label,
            "probabilities": self.probabilities,
            "raw_probabilities": self.raw_probabilities or self.probabilities,
            "tile_sets": {name: {"coords": view.coords.astype(int).tolist(), "level0_px": int(view.level0_px)}
                          for name, view in self.tile_sets.items()},
            "layers": [layer.to_dict() for layer in self.layers],
            "top_tiles": self.top_tiles(top_k),
        }


class BundleScorer:
    """A bundle's method and model, built once; ``score`` is safe to call repeatedly (not concurrently)."""

    def __init__(self, bundle: ModelBundle):
        self.bundle = bundle
        self.method: Method
        self.model: nn.Module
        self.method, self.model = bundle.build()

    def score(self, slide: SlideData, *, explain: bool = True) -> ScoredSlide:
        return score_slide(self.bundle, self.method, self.model, slide, explain=explain)


def score_slide(bundle: ModelBundle, method: Method, model: nn.Module, slide: SlideData, *,
                explain: bool = True) -> ScoredSlide:
    """Predict one slide and (by default) explain the predicted class. ``probabilities`` are calibrated with the
    bundle's temperature (which never changes the predicted class); ``raw_probabilities`` are the model's own."""
    for tile_set, dim in method.input_dims().items():
        got = slide.features.get(tile_set)
        if got is None:
            raise ValueError(f"{slide.slide_id}: the {bundle.method_name} model needs {tile_set!r} features")
        if got.shape[1] != dim:
            raise ValueError(f"{slide.slide_id}: {tile_set!r} features are {got.shape[1]}-d, the model expects {dim}")
    pred = method.predict(model, slide)
    names = bundle.class_names
    idx = pred.label_index
    layers = method.explain(model, slide, idx, names) if explain else []
    for layer in layers:
        n = len(slide.tile_sets[layer.tile_set])
        if len(layer.values) != n:
            raise RuntimeError(f"{bundle.method_name}.explain returned {len(layer.values)} values for "
                               f"{n} {layer.tile_set!r} tiles")
    raw = np.asarray(pred.probs, dtype=np.float64)
    calibrated = apply_temperature(raw, bundle.spec.calibration.temperature)
    return ScoredSlide(slide.slide_id, {c: float(p) for c, p in zip(names, calibrated, strict=True)},
                       names[idx], idx, layers, dict(slide.tile_sets),
                       {c: float(p) for c, p in zip(names, raw, strict=True)})


def slide_from_features(slide_id: str, features: np.ndarray, coords: np.ndarray, level0_px: int) -> SlideData:
    """A ``tiles``-only slide from one feature matrix (feature uploads, the pyfunc model)."""
    feats = np.asarray(features, dtype=np.float32)
    return SlideData(slide_id, None, {"tiles": TileSetView(np.asarray(coords, dtype=np.int64).reshape(-1, 2),
                                                           int(level0_px))}, {"tiles": feats})
