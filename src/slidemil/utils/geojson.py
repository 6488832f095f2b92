"""GeoJSON in slidemil: level-0 pixel polygons that QuPath imports as objects.

One reader of polygon geometry and one writer, so every export (tissue contours, per-tile scores, a
predicted slide) is strict JSON written atomically and every consumer sees Polygon and MultiPolygon alike.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

from slidemil.utils.atomic import write_text_atomic

# Fixed namespace: re-exporting the same object gives the same id, so QuPath (which keeps a UUID id on
# import) updates objects on a re-import instead of duplicating them.
ID_NAMESPACE = uuid.UUID("6f0b7f52-3d0e-4c55-9a51-5a1de3117c0a")


def feature_id(*parts: object) -> str:
    """A deterministic UUID (uuid5) for the object named by ``parts`` (slide id, kind, index, ...)."""
    return str(uuid.uuid5(ID_NAMESPACE, "/".join(str(p) for p in parts)))


def polygons(feature_collection: dict) -> Iterator[list]:
    """Each polygon of a FeatureCollection as its list of rings (outer first, then holes).

    Polygon features give one, MultiPolygon features one per member; other geometries are skipped.
    """
    for feat in feature_collection.get("features", []):
        geom = feat.get("geometry") or {}
        if geom.get("type") == "Polygon":
            yield geom.get("coordinates") or []
        elif geom.get("type") == "MultiPolygon":
            yield from geom.get("coordinates") or []


def write_geojson(path: str | Path, feature_collection: dict) -> Path:
    """Write atomically as compact, strict JSON (NaN is refused rather than written invalidly)."""
    path = Path(path)
    write_text_atomic(path, json.dumps(feature_collection, separators=(",", ":"), allow_nan=False))
    return path
