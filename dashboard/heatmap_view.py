"""Re-compositing a heatmap in the app from what the `heatmaps` stage saved (no slide access needed).

The stage writes the thumbnail and per-tile attention (QuPath GeoJSON, level-0 px) next to its baked
``heatmap.png``. Painting again from those with :func:`slidemil.evaluation.heatmap.render_heatmap` lets the
reviewer change opacity and colormap and toggle tissue contours, and gives exactly the stage's image at the
stage's settings. Pure functions (numpy in, numpy out) so they are tested without Streamlit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from slidemil.evaluation.heatmap import HeatmapParams, render_heatmap, with_colorbar
from slidemil.slides.masks import rasterize_polygons, to_mask_px
from slidemil.utils.geojson import polygons

CONTOUR_RGB = (0, 170, 60)
_TILE_NAME = re.compile(r"_(top|bottom)(\d+)_score([^_]+)_x(-?\d+)_y(-?\d+)\.png$")


@dataclass
class TileScores:
    """Tiles of one slide: level-0 top-left corners, the square side in level-0 px, one score each."""

    coords: np.ndarray  # float64 (N, 2)
    level0_px: float
    scores: np.ndarray  # float64 (N,), NaN where the measurement is missing

    def __len__(self) -> int:
        return int(self.coords.shape[0])


def measurement_names(fc: dict) -> list[str]:
    """Measurement names present in a tile FeatureCollection (first-seen order)."""
    names: dict[str, None] = {}
    for feat in fc.get("features", []):
        for k in (feat.get("properties") or {}).get("measurements") or {}:
            names.setdefault(k, None)
    return list(names)


def tile_scores_from_geojson(fc: dict, measurement: str = "attention") -> TileScores:
    """Tile corners, side and one measurement from the stage's ``tiles.geojson`` (squares in level-0 px)."""
    coords, sides, scores = [], [], []
    for feat in fc.get("features", []):
        geom = feat.get("geometry") or {}
        if geom.get("type") != "Polygon" or not geom.get("coordinates"):
            continue
        ring = np.asarray(geom["coordinates"][0], dtype=np.float64)
        x0, y0 = ring[:, 0].min(), ring[:, 1].min()
        coords.append((x0, y0))
        sides.append(max(ring[:, 0].max() - x0, ring[:, 1].max() - y0))
        value = ((feat.get("properties") or {}).get("measurements") or {}).get(measurement)
        scores.append(math.nan if value is None else float(value))
    if not coords:
        return TileScores(np.zeros((0, 2)), 0.0, np.zeros(0))
    return TileScores(np.asarray(coords), float(np.median(sides)), np.asarray(scores, dtype=np.float64))


def resolve_geometry(
    thumb_hw: tuple[int, int],
    *,
    slide_dims: tuple[int, int] | None = None,
    thumb_downsample: float | None = None,
    tiles: TileScores | None = None,
) -> tuple[float, tuple[int, int], str]:
    """Level-0 px per thumbnail px, level-0 (w, h) and how they were found.

    Best: both recorded. Next: the slide size (the thumbnail keeps the aspect ratio, so the downsample is the
    long side ratio; exact up to the thumbnail's rounding to whole pixels). Last resort: the extent of the tiles,
    a lower bound on the slide size, so the overlay may sit slightly off; the caller should say so.
    """
    th, tw = int(thumb_hw[0]), int(thumb_hw[1])
    if slide_dims is not None and thumb_downsample:
        return float(thumb_downsample), (int(slide_dims[0]), int(slide_dims[1])), "recorded"
    if slide_dims is not None:
        w0, h0 = int(slide_dims[0]), int(slide_dims[1])
        return max(w0, h0) / max(tw, th), (w0, h0), "slide size"
    if thumb_downsample:
        ds = float(thumb_downsample)
        return ds, (round(tw * ds), round(th * ds)), "recorded downsample"
    if tiles is not None and len(tiles):
        ext_w = float(tiles.coords[:, 0].max() + tiles.level0_px)
        ext_h = float(tiles.coords[:, 1].max() + tiles.level0_px)
        ds = max(1.0, ext_w / tw, ext_h / th)
        return ds, (round(tw * ds), round(th * ds)), "estimated from the tile extent"
    return 1.0, (tw, th), "unknown (assumed 1)"


def draw_contours(rgb: np.ndarray, fc: dict, downsample: float, colour: tuple[int, int, int] = CONTOUR_RGB,
                  thickness: int | None = None) -> np.ndarray:
    """Copy of ``rgb`` with every polygon ring of a level-0 GeoJSON drawn as a closed line."""
    out = np.ascontiguousarray(rgb).copy()
    thickness = thickness or max(1, round(max(out.shape[:2]) / 400))
    for rings in polygons(fc):
        pts = [np.round(to_mask_px(r, downsample)).astype(np.int32) for r in rings]
        cv2.polylines(out, [p.reshape(-1, 1, 2) for p in pts if len(p) > 1], True, colour, thickness,
                      lineType=cv2.LINE_AA)
    return out


def composite(
    thumbnail: np.ndarray,
    downsample: float,
    tiles: TileScores,
    slide_dims: tuple[int, int],
    *,
    cmap: str = "jet",
    alpha: float = 0.5,
    blur_sigma_px: float = 0.0,
    tissue_fc: dict | None = None,
    contours: bool = False,
    colorbar: bool = True,
) -> np.ndarray:
    """The heatmap overlay as the stage paints it (tissue-masked when contours are known), plus options.

    The canvas is kept at thumbnail scale, as in the stage, so at the stage's cmap/alpha the result equals its
    ``heatmap.png`` pixel for pixel.
    """
    params = HeatmapParams(canvas_max_side=max(thumbnail.shape[:2]), blur_sigma_px=blur_sigma_px, cmap=cmap,
                           alpha=alpha)
    mask = rasterize_polygons(tissue_fc, thumbnail.shape[:2], downsample) if tissue_fc else None
    result = render_heatmap(thumbnail, downsample, tiles.coords, tiles.level0_px, tiles.scores, params,
                            tissue_mask=mask, mask_downsample=downsample if mask is not None else None,
                            slide_dims=slide_dims)
    out = result.overlay_rgb
    if contours and tissue_fc:
        out = draw_contours(out, tissue_fc, downsample)
    return with_colorbar(out, cmap) if colorbar else out


def top_tiles(folder: Path) -> list[dict]:
    """Saved top/bottom tiles parsed from their names (``..._top001_score+0.1234_x512_y256.png``)."""
    records = []
    for path in sorted(Path(folder).glob("*.png")) if Path(folder).is_dir() else []:
        m = _TILE_NAME.search(path.name)
        if not m:
            continue
        try:
            score = float(m.group(3))
        except ValueError:
            score = math.nan
        records.append({"kind": m.group(1), "rank": int(m.group(2)), "score": score, "x": int(m.group(4)),
                        "y": int(m.group(5)), "path": path})
    return sorted(records, key=lambda r: (r["kind"] != "top", r["rank"]))
