"""Re-painting a slide's score layers in the app from what the `heatmaps` stage saved (no slide access needed).

The stage writes, per test slide, ``record.json`` (``ScoredSlide.record()`` plus fold, family, true label and
the thumbnail geometry) and ``thumbnail.png`` next to its baked ``heatmap.png``. Painting again from those with
the stage's own functions lets the reviewer pick a layer, change opacity, colormap and blur, and toggle tissue
contours, with exactly the stage's colour semantics (relative scores as within-slide percentiles,
probabilities on an absolute 0-1 scale). Pure functions (numpy in, numpy out), tested without Streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from slidemil.evaluation.heatmap import HeatmapParams, legend_labels, paint_score_layer, with_legend
from slidemil.methods import ScoreLayer
from slidemil.scoring import ScoredSlide
from slidemil.slides.masks import rasterize_polygons, to_mask_px
from slidemil.utils.geojson import polygons

CONTOUR_RGB = (0, 170, 60)


@dataclass
class SlideRecord(ScoredSlide):
    """One slide's ``record.json``: the scored slide (prediction, score layers over tile sets) plus the top
    tiles the stage saved and where the record came from."""

    saved_top_tiles: list[dict] = field(default_factory=list)
    true_label: str = ""
    family: str = ""
    fold: int = -1
    slide_dims: tuple[int, int] = (0, 0)  # level-0 (w, h)
    thumb_downsample: float = 1.0  # level-0 px per thumbnail px

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SlideRecord:
        """Parse the stage's JSON; a missing key raises ValueError naming it (an incomplete or foreign file)."""
        try:
            base = ScoredSlide.from_record(d)
            return cls(**{f.name: getattr(base, f.name) for f in fields(ScoredSlide)},
                       saved_top_tiles=list(d["top_tiles"]), true_label=str(d["true_label"]),
                       family=str(d["family"]), fold=int(d["fold"]),
                       slide_dims=(int(d["slide_width"]), int(d["slide_height"])),
                       thumb_downsample=float(d["thumb_downsample"]))
        except KeyError as e:
            raise ValueError(f"record.json has no {e.args[0]!r}") from e

    def stage_title(self, layer: ScoreLayer) -> str:
        """The title line the heatmaps stage prints on its image (kept equal so the stage's image is reproduced)."""
        return f"{self.slide_id} | {self.family} fold {self.fold} | {self.label}: {layer.name}"


def layer_summary(layer: ScoreLayer) -> str:
    """Kind and class of a layer in words, for the caption beside the picture."""
    return f"{layer.kind}" + (f" for class {layer.class_name}" if layer.class_name else "")


def colour_meaning(layer: ScoreLayer) -> str:
    """What the colours of a painted layer mean (the same rule as the stage's legend)."""
    if layer.relative:
        return ("Colours: within-slide percentile (0 = lowest tile, 100 = highest); ranks tiles within this "
                "slide only, not comparable across slides")
    return "Colours: probability 0-1 (absolute scale, comparable across slides)"


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
    record: SlideRecord,
    layer: ScoreLayer,
    *,
    cmap: str = "jet",
    alpha: float = 0.5,
    blur_sigma_px: float = 0.0,
    tissue_fc: dict | None = None,
    contours: bool = False,
    legend: bool = True,
) -> np.ndarray:
    """One score layer painted as the stage paints it (tissue-masked when contours are known), plus options.

    The canvas is kept at thumbnail scale, as in the stage, so at the stage's cmap/alpha/blur the primary layer
    equals its ``heatmap.png`` pixel for pixel (same title line and labelled colour bar).
    """
    ds = record.thumb_downsample
    view = record.tile_sets[layer.tile_set]
    params = HeatmapParams(canvas_max_side=max(thumbnail.shape[:2]), blur_sigma_px=blur_sigma_px, cmap=cmap,
                           alpha=alpha)
    mask = rasterize_polygons(tissue_fc, thumbnail.shape[:2], ds) if tissue_fc else None
    result = paint_score_layer(thumbnail, ds, layer, view.coords, view.level0_px, params, tissue_mask=mask,
                               mask_downsample=ds if mask is not None else None, slide_dims=record.slide_dims)
    out = result.overlay_rgb
    if contours and tissue_fc:
        out = draw_contours(out, tissue_fc, ds)
    if not legend:
        return out
    _, low, high = legend_labels(layer)
    return with_legend(out, cmap, record.stage_title(layer), low, high)


def top_tile_image(folder: Path, slide_id: str, tile: Mapping[str, Any]) -> Path | None:
    """The PNG the stage saved for one of the record's top tiles (matched by rank and level-0 corner)."""
    hits = sorted(Path(folder).glob(f"{slide_id}_top{int(tile['rank']):03d}_*_x{int(tile['x'])}_y{int(tile['y'])}.png"))
    return hits[0] if hits else None
