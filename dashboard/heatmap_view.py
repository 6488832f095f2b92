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

from slidemil.evaluation.heatmap import (
    HeatmapParams,
    colorize,
    layer_legend,
    legend_caption,
    legend_labels,
    legend_ticks,
    paint_score_layer,
)
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
    slide_path: str = ""  # the slide file the stage read ("" in records from before the viewer)
    ground_truth: str | None = None  # file name of the copied ground-truth GeoJSON beside the record
    segments: dict | None = None  # SAM-MIL families: segmenter id, smallest segment per tile, group areas

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SlideRecord:
        """Parse the stage's JSON; a missing key raises ValueError naming it (an incomplete or foreign file)."""
        try:
            base = ScoredSlide.from_record(d)
            return cls(**{f.name: getattr(base, f.name) for f in fields(ScoredSlide)},
                       saved_top_tiles=list(d["top_tiles"]), true_label=str(d["true_label"]),
                       family=str(d["family"]), fold=int(d["fold"]),
                       slide_dims=(int(d["slide_width"]), int(d["slide_height"])),
                       thumb_downsample=float(d["thumb_downsample"]), slide_path=str(d.get("slide_path") or ""),
                       ground_truth=d.get("ground_truth"), segments=d.get("segments"))
        except KeyError as e:
            raise ValueError(f"record.json has no {e.args[0]!r}") from e

    @property
    def model_label(self) -> str:
        """The exact model behind every number of the record: family and the fold model that scored it."""
        return f"{self.family} fold {self.fold}"

    def stage_title(self, layer: ScoreLayer) -> str:
        """The title line the heatmaps stage prints on its image (kept equal so the stage's image is reproduced)."""
        return f"{self.slide_id} | {self.family} fold {self.fold} | {self.label}: {layer.name}"


def family_record_path(folder: Path, family: str, primary_family: str) -> Path | None:
    """The record of ``family`` for one slide: ``models/<family>/record.json``, else the folder's own
    ``record.json`` when ``family`` is the painted one (records from before per-family outputs)."""
    path = Path(folder) / "models" / family / "record.json"
    if path.is_file():
        return path
    own = Path(folder) / "record.json"
    return own if family == primary_family and own.is_file() else None


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
    cmap: str = "viridis",
    alpha: float = 0.5,
    blur_sigma_px: float = 0.0,
    blur_tiles: float = 0.0,
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
    params = HeatmapParams(canvas_max_side=max(thumbnail.shape[:2]), blur_sigma_px=blur_sigma_px,
                           blur_tiles=blur_tiles, cmap=cmap, alpha=alpha)
    mask = rasterize_polygons(tissue_fc, thumbnail.shape[:2], ds) if tissue_fc else None
    result = paint_score_layer(thumbnail, ds, layer, view.coords, view.level0_px, params, tissue_mask=mask,
                               mask_downsample=ds if mask is not None else None, slide_dims=record.slide_dims)
    out = result.overlay_rgb
    if contours and tissue_fc:
        out = draw_contours(out, tissue_fc, ds)
    if not legend:
        return out
    return layer_legend(out, cmap, layer, record.stage_title(layer), record.model_label)


def top_tile_image(folder: Path, slide_id: str, tile: Mapping[str, Any]) -> Path | None:
    """The PNG the stage saved for one of the record's top tiles (matched by rank and level-0 corner)."""
    hits = sorted(Path(folder).glob(f"{slide_id}_top{int(tile['rank']):03d}_*_x{int(tile['x'])}_y{int(tile['y'])}.png"))
    return hits[0] if hits else None


# ---- viewer overlays (transparent PNGs laid over the Deep Zoom image) ------------------------------------
def score_rgba(thumbnail_shape: tuple[int, int], record: SlideRecord, layer: ScoreLayer, *, cmap: str = "viridis",
               blur_sigma_px: float = 0.0, blur_tiles: float = 0.0, tissue_fc: dict | None = None) -> np.ndarray:
    """One score layer as an RGBA image at thumbnail scale: the stage's colours where tiles (inside tissue) are,
    fully transparent elsewhere; the viewer sets the opacity."""
    h, w = int(thumbnail_shape[0]), int(thumbnail_shape[1])
    ds = record.thumb_downsample
    view = record.tile_sets[layer.tile_set]
    params = HeatmapParams(canvas_max_side=max(h, w), blur_sigma_px=blur_sigma_px, blur_tiles=blur_tiles, cmap=cmap,
                           alpha=1.0)
    mask = rasterize_polygons(tissue_fc, (h, w), ds) if tissue_fc else None
    result = paint_score_layer(np.zeros((h, w, 3), np.uint8), ds, layer, view.coords, view.level0_px, params,
                               tissue_mask=mask, mask_downsample=ds if mask is not None else None,
                               slide_dims=record.slide_dims)
    painted = np.isfinite(result.canvas)
    if painted.shape != (h, w):
        painted = cv2.resize(painted.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    return np.dstack([result.overlay_rgb, np.where(painted, 255, 0).astype(np.uint8)])


def contour_rgba(fc: dict, slide_dims: tuple[int, int], colour: tuple[int, int, int], max_side: int = 4096,
                 thickness: int = 3) -> np.ndarray:
    """Every polygon ring of a level-0 GeoJSON as an opaque line on a transparent RGBA image of the slide's
    shape (longer side ``max_side``), sharp enough to zoom into."""
    w0, h0 = slide_dims
    ds = max(w0, h0) / max_side
    out = np.zeros((max(1, round(h0 / ds)), max(1, round(w0 / ds)), 4), np.uint8)
    for rings in polygons(fc):
        pts = [np.round(to_mask_px(r, ds)).astype(np.int32) for r in rings]
        cv2.polylines(out, [p.reshape(-1, 1, 2) for p in pts if len(p) > 1], True, (*colour, 255), thickness,
                      lineType=cv2.LINE_AA)
    return out


def colour_stops(cmap: str, n: int = 11) -> list[str]:
    """``n`` hex colours of a colormap, low to high: the viewer's CSS gradient for the legend bar."""
    rgb = colorize(np.linspace(0.0, 1.0, n, dtype=np.float32)[None, :], cmap)[0]
    return ["#{:02x}{:02x}{:02x}".format(*(int(v) for v in c)) for c in rgb]


def legend_payload(record: SlideRecord, layer: ScoreLayer, cmap: str) -> dict:
    """What the viewer's HTML legend shows for a layer: the same title, ticks and caption as the PNG legend."""
    title, _, _ = legend_labels(layer)
    return {"title": title, "ticks": legend_ticks(layer), "caption": legend_caption(layer, record.model_label),
            "model": record.model_label, "colours": colour_stops(cmap), "relative": layer.relative}


def segment_colours(n_groups: int, unsegmented: int = -1) -> np.ndarray:
    """(G, 3) uint8 distinct colours per segment group (golden-ratio hues, so neighbours in id differ); the
    sentinel "unsegmented" group is grey."""
    hue = (np.arange(n_groups) * 0.618033988749895 % 1.0 * 180).astype(np.uint8)
    hsv = np.stack([hue, np.full(n_groups, 200, np.uint8), np.full(n_groups, 230, np.uint8)], axis=1)
    rgb = cv2.cvtColor(hsv.reshape(-1, 1, 3), cv2.COLOR_HSV2RGB).reshape(-1, 3) if n_groups else hsv
    if 0 <= unsegmented < n_groups:
        rgb[unsegmented] = (128, 128, 128)
    return rgb


def segments_rgba(thumbnail_shape: tuple[int, int], coords: np.ndarray, level0_px: int, downsample: float,
                  group: np.ndarray, unsegmented: int = -1, alpha: float = 0.55) -> np.ndarray:
    """(H, W, 4) uint8 overlay drawing each tile in the colour of its smallest segment, semi-transparent, for
    the Slides page's "Segments" toggle. ``coords`` are level-0 tile origins, ``downsample`` the thumbnail's."""
    h, w = thumbnail_shape[:2]
    out = np.zeros((h, w, 4), dtype=np.uint8)
    group = np.asarray(group, dtype=np.int64)
    if group.size == 0:
        return out
    colours = segment_colours(int(group.max()) + 1, unsegmented)
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    x0 = np.clip(np.floor(coords[:, 0] / downsample), 0, w).astype(int)
    y0 = np.clip(np.floor(coords[:, 1] / downsample), 0, h).astype(int)
    x1 = np.clip(np.ceil((coords[:, 0] + level0_px) / downsample), 0, w).astype(int)
    y1 = np.clip(np.ceil((coords[:, 1] + level0_px) / downsample), 0, h).astype(int)
    a = int(round(255 * alpha))
    for i in range(group.size):
        out[y0[i]:y1[i], x0[i]:x1[i], :3] = colours[group[i]]
        out[y0[i]:y1[i], x0[i]:x1[i], 3] = a
    return out


def segments_image(thumb: np.ndarray, record: SlideRecord, alpha: float = 0.55) -> np.ndarray:
    """The thumbnail with the record's tiles coloured by segment (alpha-blended), RGB uint8."""
    seg = record.segments or {}
    view = record.tile_sets[seg.get("tile_set", "tiles")]
    rgba = segments_rgba(thumb.shape[:2], view.coords, view.level0_px, record.thumb_downsample,
                         np.asarray(seg.get("group", []), dtype=np.int64), int(seg.get("unsegmented", -1)), alpha)
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    return (thumb[..., :3] * (1 - a) + rgba[..., :3] * a).astype(np.uint8)


def scale_layers(record: ScoredSlide) -> list[tuple[str, str]]:
    """Multi-scale records (MSA: child tiles and their parents on another tile set): the first layer of each
    tile set with a caption naming the scale and tile size, to show the maps side by side; [] for one scale."""
    seen: dict[str, str] = {}
    for la in record.layers:
        seen.setdefault(la.tile_set, la.name)
    if len(seen) < 2:
        return []
    return [(name, f"{ts} scale: {name}, {record.tile_sets[ts].level0_px} level-0 px tiles "
                   f"({len(record.tile_sets[ts])} tiles)") for ts, name in seen.items()]
