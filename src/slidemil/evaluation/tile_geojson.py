"""Per-tile scores as a GeoJSON FeatureCollection that QuPath (0.4+) imports as tile objects.

Why GeoJSON: it is QuPath's own object exchange format, so a pathologist can drag the file onto the slide
and colour or filter tiles by any score (Measure -> Show measurement maps). The shape follows what QuPath
writes and reads since v0.4: each Feature has a Polygon in level-0 pixels (origin top-left), an ``id`` UUID,
and ``properties`` with ``objectType`` ("tile"), ``name``, ``measurements`` as a ``{name: number}`` object,
optional ``classification`` ``{"name", "color": [r, g, b]}`` and string-valued ``metadata``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence

import numpy as np

from slidemil.evaluation.heatmap import to_percentiles
from slidemil.utils.geojson import ID_NAMESPACE, feature_id

OBJECT_TYPES = ("tile", "detection", "annotation")

#: tiles at or above this within-slide percentile of the primary layer are classified as the predicted class
EVIDENCE_PERCENTILE = 0.9
#: QuPath's built-in class for everything else
OTHER_CLASS = "Other"


def tile_polygon(x: float, y: float, side: float) -> list[list[float]]:
    """Closed square ring (first point repeated last), counter-clockwise in x-right/y-up terms."""
    x, y, side = _num(x), _num(y), _num(side)
    return [[x, y], [x + side, y], [x + side, y + side], [x, y + side], [x, y]]


def tiles_to_geojson(
    coords: np.ndarray,
    level0_px: float,
    scores: Mapping[str, np.ndarray],
    slide_id: str,
    classification: str | Sequence[str | None] | None = None,
    class_colors: Mapping[str, tuple[int, int, int]] | None = None,
    object_type: str = "tile",
) -> dict:
    """One Feature per tile with every array in ``scores`` as a QuPath measurement.

    Non-finite scores are left out of that tile's measurements (JSON has no NaN; QuPath shows a missing
    measurement as NaN). ``classification`` is one class name for all tiles or one per tile (None = none).
    """
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {OBJECT_TYPES}, got {object_type!r}")
    coords = np.asarray(coords).reshape(-1, 2)
    n = coords.shape[0]
    columns = {}
    for name, values in scores.items():
        arr = np.asarray(values, dtype=np.float64).ravel()
        if arr.shape[0] != n:
            raise ValueError(f"score {name!r} has {arr.shape[0]} values for {n} tiles")
        columns[str(name)] = arr.tolist()
    classes = _per_tile_classes(classification, n)
    colors = dict(class_colors or {})

    features = []
    for i in range(n):
        x, y = coords[i].tolist()
        measurements = {k: v for k, col in columns.items() if math.isfinite(v := col[i])}
        props: dict = {
            "objectType": object_type,
            "name": f"{slide_id} tile {i}",
            "measurements": measurements,
            "metadata": {"slide_id": str(slide_id), "tile_index": str(i)},
        }
        cls = classes[i]
        if cls is not None:
            props["classification"] = {"name": cls, "color": list(colors.get(cls, _default_color(cls)))}
        features.append({
            "type": "Feature",
            "id": feature_id(slide_id, i, x, y),  # stable UUID: a re-import updates, never duplicates
            "geometry": {"type": "Polygon", "coordinates": [tile_polygon(x, y, level0_px)]},
            "properties": props,
        })
    return {"type": "FeatureCollection", "features": features}


def scored_tiles_geojson(scored, tile_set: str | None = None,
                         class_colors: Mapping[str, tuple[int, int, int]] | None = None) -> dict:
    """The tiles of one tile set of a scored slide (:class:`slidemil.scoring.ScoredSlide`) as QuPath reads best.

    Measurements per tile: every score layer of the tile set, raw (``attention (raw)``) and, for within-slide
    scores (attention, contribution, rank), as a 0-1 within-slide percentile (``attention percentile``);
    probability layers as they are; and the slide's class probabilities (``P(<class>)``). Classification:
    the predicted class for the tiles at or above the primary layer's 90th percentile (the evidence), QuPath's
    ``Other`` for the rest. The slide id goes in every tile's metadata.
    """
    layers = [la for la in scored.layers if la.tile_set == (tile_set or scored.primary.tile_set)]
    if not layers:
        raise ValueError(f"{scored.slide_id}: no score layer on tile set {tile_set!r}")
    view = scored.tile_sets[layers[0].tile_set]
    n = len(view.coords)
    measurements: dict[str, np.ndarray] = {}
    for la in layers:
        if la.relative:
            measurements[f"{la.name} (raw)"] = np.asarray(la.values, np.float64)
            measurements[f"{la.name} percentile"] = to_percentiles(la.values)
        else:
            measurements[la.name] = np.asarray(la.values, np.float64)
    for cls, prob in scored.probabilities.items():
        measurements[f"P({cls})"] = np.full(n, float(prob))
    primary = layers[0]
    evidence = to_percentiles(primary.values) if primary.relative else np.asarray(primary.values, np.float64)
    classes = [scored.label if e >= EVIDENCE_PERCENTILE else OTHER_CLASS for e in evidence]
    colors = {OTHER_CLASS: (160, 160, 160), **dict(class_colors or {})}
    return tiles_to_geojson(view.coords, view.level0_px, measurements, scored.slide_id, classification=classes,
                            class_colors=colors)


def _per_tile_classes(classification, n: int) -> list[str | None]:
    if classification is None or isinstance(classification, str):
        return [classification] * n
    classes = list(classification)
    if len(classes) != n:
        raise ValueError(f"{len(classes)} classifications for {n} tiles")
    return [None if c is None else str(c) for c in classes]


def _default_color(name: str) -> tuple[int, int, int]:
    """Stable colour per class name (a hash, so the same class looks the same in every export)."""
    h = uuid.uuid5(ID_NAMESPACE, name).bytes
    return int(h[0]), int(h[1]), int(h[2])


def _num(v: float) -> int | float:
    """Integers stay integers in the JSON (coordinates are whole pixels almost always)."""
    f = float(v)
    return int(f) if f.is_integer() else f


def class_map_geojson(coords: np.ndarray, level0_px: float, probs: np.ndarray, class_names: Sequence[str],
                      slide_id: str, class_colors: Mapping[str, tuple[int, int, int]] | None = None) -> dict:
    """A tile classifier's output for QuPath: each tile classified as its most probable class, with every
    class probability as a measurement (``p_<class>``), so measurement maps show each class map."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(f"{slide_id}: probabilities of shape {probs.shape} for {len(class_names)} classes")
    names = [str(c) for c in class_names]
    return tiles_to_geojson(coords, level0_px, {f"p_{c}": probs[:, i] for i, c in enumerate(names)}, slide_id,
                            classification=[names[i] for i in probs.argmax(1)], class_colors=class_colors)
