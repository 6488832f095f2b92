"""The ``tile_labels`` store layer: a class per tile from annotation polygons, and which tiles are labelled.

Sources: a GeoJSON FeatureCollection as QuPath exports annotations (Polygon / MultiPolygon in level-0 pixels,
``properties.classification.name``), pointed at by a manifest column per slide; the demo's ground truth is
the same format (``<slide>_tumour.geojson``, class "Tumor"), so both go through :func:`tile_classes`.

Rules (why): a tile takes the class of the annotation containing its *centre* (QuPath assigns detections to
annotations by centroid too); where polygons of two classes overlap, the later feature wins (QuPath's
z-order: objects drawn later are on top). Tiles in no polygon get ``background`` when given (e.g. "normal"
for the demo: tissue outside the tumour outline) or stay unannotated. Of the annotated tiles of each class a
``fraction`` or a ``count`` is drawn as labelled (the few labels CLASS-M is given); the rest - annotated or
not - form the unlabelled pool. Splits stay at the slide / case level (``slidemil.data.splits``); for patch
sets without slides, :func:`group_split` keeps near-copies (LC25000's ``group``) in one split.

Arrays: ``class_index`` (N,) int16 (-1 = unannotated), ``labelled`` (N,) bool. Attributes: ``class_names``
(JSON), the source file, the draw settings, the tile set and its ``tiles_digest``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slidemil.store.layers import Layer, LayerError, read_layer, write_layer
from slidemil.utils.config import StrictConfig

KIND = "tile_labels"
UNANNOTATED = -1


@dataclass(frozen=True)
class TileLabelConfig(StrictConfig):
    """How tile labels are made (params.yaml ``classm.labels``).

    Attributes:
        class_names: tile classes in model order.
        class_map: annotation classification name -> tile class (names not listed are ignored).
        background: class of tissue tiles in no annotation ("" = leave them unannotated).
        fraction: share of each class's annotated tiles that is labelled (used when ``count`` is 0).
        count: labelled tiles per class (0 = use ``fraction``).
        seed: seed of the draw.
    """

    class_names: tuple[str, ...] = ("normal", "tumour")
    class_map: Mapping[str, str] | None = None
    background: str = "normal"
    fraction: float = 0.05
    count: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.background and self.background not in self.class_names:
            raise ValueError(f"background class {self.background!r} is not one of {list(self.class_names)}")
        unknown = sorted(set((self.class_map or {}).values()) - set(self.class_names))
        if unknown:
            raise ValueError(f"class_map maps to unknown classes {unknown}; class_names: {list(self.class_names)}")
        if not 0.0 <= self.fraction <= 1.0 or self.count < 0:
            raise ValueError("fraction must be in [0, 1] and count >= 0")


@dataclass
class TileLabels:
    """Typed view of the layer."""

    class_index: np.ndarray  # (N,) int, -1 = unannotated
    labelled: np.ndarray  # (N,) bool
    class_names: tuple[str, ...]

    def training_labels(self) -> np.ndarray:
        """(N,) class index for labelled tiles, -1 for the unlabelled pool (what the tile loop reads)."""
        return np.where(self.labelled, self.class_index, UNANNOTATED).astype(np.int64)


def tile_classes(coords: np.ndarray, level0_px: float, feature_collection: Mapping, config: TileLabelConfig,
                 *, source: str = "annotations") -> np.ndarray:
    """(N,) class index per tile from annotation polygons (centre rule, later features on top)."""
    from shapely import contains_xy
    from shapely.geometry import shape

    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    cx, cy = coords[:, 0] + level0_px / 2.0, coords[:, 1] + level0_px / 2.0
    index = {c: i for i, c in enumerate(config.class_names)}
    class_map = dict(config.class_map or {c: c for c in config.class_names})
    out = np.full(coords.shape[0], index[config.background] if config.background else UNANNOTATED, np.int16)
    if feature_collection.get("type") != "FeatureCollection":
        raise ValueError(f"{source}: not a GeoJSON FeatureCollection")
    for k, feat in enumerate(feature_collection.get("features", [])):
        geom = feat.get("geometry") or {}
        if geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        name = ((feat.get("properties") or {}).get("classification") or {}).get("name")
        if name not in class_map:
            continue
        try:
            poly = shape(geom)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"{source}: feature {k} has an invalid {geom.get('type')}: {exc}") from None
        out[contains_xy(poly, cx, cy)] = index[class_map[name]]
    return out


def draw_labelled(class_index: np.ndarray, n_classes: int, *, fraction: float, count: int = 0,
                  seed: int = 0) -> np.ndarray:
    """(N,) bool: per class, ``count`` (if > 0) or round(``fraction`` x its annotated tiles), at least one
    when the class has any, drawn without replacement."""
    rng = np.random.default_rng(seed)
    labelled = np.zeros(class_index.shape[0], dtype=bool)
    for c in range(n_classes):
        rows = np.flatnonzero(class_index == c)
        if rows.size == 0:
            continue
        n = min(rows.size, count if count > 0 else max(1, round(fraction * rows.size)))
        labelled[rng.choice(rows, n, replace=False)] = True
    return labelled


def group_split(groups: np.ndarray, strata: np.ndarray, fractions: Mapping[str, float],
                seed: int = 0) -> dict[str, np.ndarray]:
    """Rows per split with whole groups in one split, drawn per stratum (e.g. class) so each split sees every
    stratum; ``fractions`` like {"train": 0.7, "val": 0.1, "test": 0.2} (the last split takes the rest)."""
    rng = np.random.default_rng(seed)
    names = list(fractions)
    parts: dict[str, list[int]] = {n: [] for n in names}
    for s in np.unique(strata):
        gs = np.unique(groups[strata == s])
        rng.shuffle(gs)
        start = 0
        for i, name in enumerate(names):
            take = gs.size - start if i == len(names) - 1 else max(1, round(fractions[name] * gs.size))
            chosen = gs[start:start + take]
            start += take
            parts[name].extend(np.flatnonzero(np.isin(groups, chosen) & (strata == s)).tolist())
    return {n: np.sort(np.asarray(v, dtype=np.int64)) for n, v in parts.items()}


def make_tile_labels(coords: np.ndarray, level0_px: float, feature_collection: Mapping,
                     config: TileLabelConfig, *, source: str = "annotations") -> TileLabels:
    classes = tile_classes(coords, level0_px, feature_collection, config, source=source)
    labelled = draw_labelled(classes, len(config.class_names), fraction=config.fraction, count=config.count,
                             seed=config.seed)
    return TileLabels(classes, labelled, config.class_names)


def write_tile_labels(path: str | Path, labels: TileLabels, *, config: TileLabelConfig, source: str,
                      tiles_digest: str, resume_key: str = "", tile_set: str = "tiles") -> Path:
    return write_layer(
        path, KIND, {"class_index": labels.class_index.astype(np.int16), "labelled": labels.labelled},
        {"class_names": json.dumps(list(labels.class_names)), "source": str(source), "tile_set": tile_set,
         "tiles_digest": tiles_digest, "config": json.dumps(config.to_dict(), sort_keys=True, default=list)},
        resume_key=resume_key)


def tile_labels_from_layer(layer: Layer, tiles_digest: str | None = None) -> TileLabels:
    """The typed view; refuses labels made for other tiles than ``tiles_digest``."""
    if tiles_digest is not None and layer.attrs.get("tiles_digest") != tiles_digest:
        raise LayerError(layer.path, "the tile labels were made for other tiles than the current tile set "
                                     "(re-run the stage that writes them)")
    try:
        names = tuple(json.loads(layer.attrs["class_names"]))
        idx, lab = np.asarray(layer.arrays["class_index"]), np.asarray(layer.arrays["labelled"], dtype=bool)
    except (KeyError, ValueError) as exc:
        raise LayerError(layer.path, f"not a valid tile_labels layer: {exc}") from None
    if idx.shape != lab.shape or (idx >= len(names)).any() or (idx < UNANNOTATED).any():
        raise LayerError(layer.path, "class_index and labelled disagree in length or name unknown classes")
    if (lab & (idx < 0)).any():
        raise LayerError(layer.path, "a tile is labelled without a class")
    return TileLabels(idx.astype(np.int64), lab, names)


def read_tile_labels(path: str | Path, tiles_digest: str | None = None) -> TileLabels:
    return tile_labels_from_layer(read_layer(path, KIND), tiles_digest)


def class_counts(labels: TileLabels) -> dict[str, dict[str, int]]:
    """Annotated and labelled tiles per class (for reports)."""
    return {c: {"annotated": int((labels.class_index == i).sum()),
                "labelled": int(((labels.class_index == i) & labels.labelled).sum())}
            for i, c in enumerate(labels.class_names)}
