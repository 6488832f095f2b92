"""QC outputs of tissue segmentation: contours as GeoJSON (QuPath annotations) and a QC thumbnail.

The GeoJSON is in level-0 pixels, so QuPath (File > Import objects) overlays it on the slide as is. Rings follow
the RFC 7946 right-hand rule on the raw numbers (outer ring positive shoelace area, holes negative) and are
closed (first position repeated last).
"""

from __future__ import annotations

import cv2
import numpy as np

from slidemil.slides.masks import to_mask_px
from slidemil.slides.tissue import TissueSegmentation
from slidemil.utils.geojson import feature_id

TISSUE_COLOR_RGB = (0, 200, 0)
HOLE_COLOR_RGB = (0, 0, 255)
TILE_COLOR_RGB = (255, 230, 140)  # light yellow: visible on pink tissue and on white glass


def _signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _pixel_box(ring: np.ndarray, seg: TissueSegmentation) -> np.ndarray:
    """Square around the boundary pixels of a piece too thin for a polygon (a line or a single pixel)."""
    half = seg.downsample / 2
    w, h = seg.slide_dims
    x0, y0 = np.maximum(ring.min(0) - half, 0)
    x1, y1 = ring.max(0) + half
    x1, y1 = min(x1, w), min(y1, h)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def _ring(points: np.ndarray, outer: bool) -> list[list[float]]:
    """Closed ring, oriented (outer counter-clockwise on the raw numbers, holes clockwise), 2 decimals."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if (_signed_area(pts) > 0) != outer:
        pts = pts[::-1]
    out = [[round(float(x), 2), round(float(y), 2)] for x, y in pts]
    if out[0] != out[-1]:
        out.append(out[0])
    return out


def contours_to_geojson(seg: TissueSegmentation, slide_id: str) -> dict:
    """FeatureCollection: one Polygon per tissue piece (outer ring + holes), level-0 px, class "Tissue"."""
    features = []
    for i, rings in enumerate(seg.contours):
        outer = np.asarray(rings[0], np.float64).reshape(-1, 2)
        if len(outer) < 3 or abs(_signed_area(outer)) == 0:
            outer = _pixel_box(outer, seg)
        holes = [np.asarray(r, np.float64).reshape(-1, 2) for r in rings[1:]]
        holes = [r for r in holes if len(r) >= 3 and abs(_signed_area(r)) > 0]
        coords = [_ring(outer, True)] + [_ring(r, False) for r in holes]
        features.append({
            "type": "Feature",
            "id": feature_id(slide_id, "tissue", i),  # a stable UUID: QuPath keeps it, re-imports do not duplicate
            "geometry": {"type": "Polygon", "coordinates": coords},
            "properties": {
                "objectType": "annotation",
                "name": f"tissue {i}",
                "classification": {"name": "Tissue", "color": list(TISSUE_COLOR_RGB)},
                "metadata": {"slide_id": str(slide_id)},
            },
        })
    return {"type": "FeatureCollection", "features": features}


def draw_qc(
    thumbnail_rgb: np.ndarray,
    thumb_downsample: float,
    seg: TissueSegmentation,
    tile_coords: np.ndarray | None = None,
    tile_size_level0: float | None = None,
) -> np.ndarray:
    """Copy of the thumbnail with tile boxes (light yellow), tissue contours (green) and holes (blue).

    ``tile_coords``: (N, 2) level-0 top-left corners; ``thumb_downsample``: level-0 px per thumbnail px.
    """
    img = np.ascontiguousarray(np.asarray(thumbnail_rgb, np.uint8))
    img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 else img[..., :3].copy()
    thickness = max(1, round(max(img.shape[:2]) / 500))
    if tile_coords is not None and len(tile_coords) and tile_size_level0:
        corners = np.asarray(tile_coords, np.float64).reshape(-1, 2) / thumb_downsample
        side = tile_size_level0 / thumb_downsample
        p0 = np.floor(corners).astype(np.int32)
        p1 = np.ceil(corners + side).astype(np.int32) - 1
        for (x0, y0), (x1, y1) in zip(p0, p1, strict=True):
            cv2.rectangle(img, (int(x0), int(y0)), (int(max(x0, x1)), int(max(y0, y1))), TILE_COLOR_RGB, 1)
    for rings in seg.contours:
        for j, ring in enumerate(rings):
            pts = np.round(to_mask_px(ring, thumb_downsample)).astype(np.int32).reshape(-1, 1, 2)
            color = TISSUE_COLOR_RGB if j == 0 else HOLE_COLOR_RGB
            cv2.polylines(img, [pts], True, color, thickness, lineType=cv2.LINE_AA)
    return img
