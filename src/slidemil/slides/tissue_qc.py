"""QC outputs of tissue segmentation: contours as GeoJSON (QuPath annotations) and a QC thumbnail."""

from __future__ import annotations

import cv2
import numpy as np

from slidemil.slides.tissue import TissueSegmentation
from slidemil.utils.atomic import atomic_path


def _ring(points: np.ndarray) -> list[list[float]]:
    pts = [[round(float(x), 2), round(float(y), 2)] for x, y in points]
    if pts and pts[0] != pts[-1]:
        pts.append(pts[0])
    return pts


def contours_to_geojson(seg: TissueSegmentation, slide_id: str) -> dict:
    """FeatureCollection of tissue Polygons in level-0 px (outer ring + holes), QuPath annotation style."""
    features = []
    for i, rings in enumerate(seg.contours):
        if len(rings[0]) < 3:
            continue
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [_ring(r) for r in rings if len(r) >= 3]},
            "properties": {"objectType": "annotation", "name": f"{slide_id} tissue {i}",
                           "classification": {"name": "Tissue", "color": [0, 160, 0]}},
        })
    return {"type": "FeatureCollection", "features": features}


def draw_qc(
    thumbnail_rgb: np.ndarray,
    thumb_downsample: float,
    seg: TissueSegmentation,
    tile_coords: np.ndarray | None = None,
    tile_size_level0: float | None = None,
) -> np.ndarray:
    """Thumbnail with tissue contours (green), holes (blue) and, optionally, the kept tiles (light grey)."""
    img = np.ascontiguousarray(thumbnail_rgb.copy())
    thickness = max(1, round(max(img.shape[:2]) / 500))
    if tile_coords is not None and tile_size_level0:
        side = tile_size_level0 / thumb_downsample
        overlay = img.copy()
        for x, y in np.asarray(tile_coords):
            p0 = (int(x / thumb_downsample), int(y / thumb_downsample))
            cv2.rectangle(overlay, p0, (int(p0[0] + side), int(p0[1] + side)), (90, 90, 90), 1)
        img = cv2.addWeighted(overlay, 0.5, img, 0.5, 0)
    for rings in seg.contours:
        for j, ring in enumerate(rings):
            pts = np.round(ring / thumb_downsample).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(img, [pts], True, (0, 200, 0) if j == 0 else (0, 0, 255), thickness)
    return img


def save_png(path, image: np.ndarray) -> None:
    """Write an RGB image as PNG atomically."""
    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
