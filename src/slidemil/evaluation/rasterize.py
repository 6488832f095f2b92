"""GeoJSON polygons (level-0 px) -> a boolean mask at a chosen downsample."""

from __future__ import annotations

import cv2
import numpy as np


def rasterize_polygons(feature_collection: dict, slide_dims: tuple[int, int], downsample: float) -> np.ndarray:
    """Fill every Polygon/MultiPolygon (outer rings filled, holes cleared) into a (h, w) bool mask."""
    w = max(1, int(np.ceil(slide_dims[0] / downsample)))
    h = max(1, int(np.ceil(slide_dims[1] / downsample)))
    mask = np.zeros((h, w), np.uint8)
    for feat in feature_collection.get("features", []):
        geom = feat.get("geometry") or {}
        polys = [geom["coordinates"]] if geom.get("type") == "Polygon" else geom.get("coordinates", []) \
            if geom.get("type") == "MultiPolygon" else []
        for rings in polys:
            pts = [np.round(np.asarray(r, dtype=np.float64) / downsample).astype(np.int32) for r in rings]
            if pts:
                cv2.fillPoly(mask, [pts[0]], 1)
                for hole in pts[1:]:
                    cv2.fillPoly(mask, [hole], 0)
    return mask.astype(bool)
