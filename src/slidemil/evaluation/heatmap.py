"""Attention heatmaps: per-tile scores painted on a thumbnail-scale canvas and blended on the slide.

Why this shape: a whole slide is ~100k x 100k px, so every array here lives at thumbnail scale (a few
thousand px at most) and tiles are painted with a 2-D difference array, never a level-0 canvas. Scores are
turned into within-slide percentiles first (raw attention is unbounded and not comparable across slides),
overlapping tiles are averaged, an optional blur smooths values without growing the painted area, and the
result is clipped to tissue so background never looks "attended".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import matplotlib
import numpy as np

from slidemil.methods.base import ScoreLayer
from slidemil.slides.geometry import TileGeometry
from slidemil.slides.reader import SlideReader
from slidemil.utils.atomic import write_png_atomic
from slidemil.utils.ranking import ranked_indices


@dataclass(frozen=True)
class HeatmapParams:
    """How a heatmap is rendered (the canvas is thumbnail-scale, never level-0-sized)."""

    canvas_max_side: int = 2048
    blur_sigma_px: float = 0.0  # Gaussian sigma in canvas px; 0 = off
    blur_tiles: float = 0.0  # extra Gaussian sigma in tile widths (the same smoothing at any thumbnail scale)
    cmap: str = "viridis"  # any matplotlib colormap name; perceptually uniform by default
    alpha: float = 0.5  # weight of the colour over the thumbnail
    percentiles: bool = True  # rank scores within the slide before painting
    tissue_masked: bool = True  # hide colour outside the tissue mask (when one is given)

    def __post_init__(self) -> None:
        if self.canvas_max_side < 1:
            raise ValueError(f"canvas_max_side must be >= 1, got {self.canvas_max_side}")
        if self.blur_sigma_px < 0:
            raise ValueError(f"blur_sigma_px must be >= 0, got {self.blur_sigma_px}")
        if self.blur_tiles < 0:
            raise ValueError(f"blur_tiles must be >= 0, got {self.blur_tiles}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        matplotlib.colormaps[self.cmap]  # fail early on a misspelt colormap


@dataclass
class HeatmapResult:
    """``overlay_rgb`` has the thumbnail's shape; ``canvas`` (NaN = no tile) is at ``downsample`` level-0 px/px."""

    overlay_rgb: np.ndarray  # uint8 (H, W, 3)
    canvas: np.ndarray  # float32 (h, w), values in [0, 1] when percentiles are on
    downsample: float


# ---- scores ------------------------------------------------------------------------------------------
def to_percentiles(scores: np.ndarray) -> np.ndarray:
    """Rank-based percentiles in [0, 1] within one slide; ties share their average rank.

    Lowest score -> 0, highest -> 1, a constant (or single) input -> 0.5 everywhere. NaN stays NaN and is
    not ranked.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    out = np.full(s.shape, np.nan, dtype=np.float64)
    finite = np.isfinite(s)
    v = s[finite]
    n = v.size
    if n == 0:
        return out
    if n == 1:
        out[finite] = 0.5
        return out
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    first_rank = np.concatenate(([0], np.cumsum(counts)[:-1]))  # 0-based rank of each group's first member
    avg_rank = first_rank + (counts - 1) / 2.0
    out[finite] = avg_rank[inverse] / (n - 1)
    return out


# ---- canvas ------------------------------------------------------------------------------------------
def canvas_downsample(slide_dims: tuple[int, int], max_side: int) -> float:
    """Level-0 px per canvas px so the canvas's longer side is <= ``max_side`` (never below 1)."""
    w0, h0 = slide_dims
    return max(1.0, max(w0, h0) / max_side)


def canvas_shape(slide_dims: tuple[int, int], downsample: float) -> tuple[int, int]:
    """(h, w) of a canvas at ``downsample``; same rounding as :meth:`SlideReader.thumbnail`."""
    w0, h0 = slide_dims
    return max(1, math.floor(h0 / downsample)), max(1, math.floor(w0 / downsample))


def _footprints(coords: np.ndarray, level0_px: float, downsample: float, shape: tuple[int, int]) -> tuple:
    """Integer canvas rectangles [x0, x1) x [y0, y1) of every tile, clipped; shared edges round alike."""
    c = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    h, w = shape
    x0 = np.rint(c[:, 0] / downsample).astype(np.int64)
    y0 = np.rint(c[:, 1] / downsample).astype(np.int64)
    x1 = np.maximum(np.rint((c[:, 0] + level0_px) / downsample).astype(np.int64), x0 + 1)
    y1 = np.maximum(np.rint((c[:, 1] + level0_px) / downsample).astype(np.int64), y0 + 1)
    x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    keep = (x1 > x0) & (y1 > y0)
    return x0[keep], y0[keep], x1[keep], y1[keep], keep


def _paint(x0, y0, x1, y1, values, shape) -> np.ndarray:
    """Sum of ``values`` over rectangles via a 2-D difference array: O(N + h*w), no per-tile loop."""
    h, w = shape
    stride = w + 1
    flat = np.concatenate((y0 * stride + x0, y0 * stride + x1, y1 * stride + x0, y1 * stride + x1))
    weights = np.concatenate((values, -values, -values, values))
    diff = np.bincount(flat, weights=weights, minlength=(h + 1) * stride).reshape(h + 1, stride)
    return np.cumsum(np.cumsum(diff, axis=0), axis=1)[:h, :w]


def score_canvas(
    coords: np.ndarray,
    level0_px: float,
    values: np.ndarray,
    slide_dims: tuple[int, int],
    downsample: float,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Paint each tile's value over its footprint at ``downsample``; overlaps are averaged.

    Returns float32 (h, w) with NaN where no tile (with a finite value) lands. ``shape`` forces the canvas
    size (e.g. to match a thumbnail exactly); by default it follows ``slide_dims / downsample``.
    """
    if downsample <= 0:
        raise ValueError(f"downsample must be positive, got {downsample}")
    vals = np.asarray(values, dtype=np.float64).ravel()
    coords = np.asarray(coords).reshape(-1, 2)
    if vals.shape[0] != coords.shape[0]:
        raise ValueError(f"{coords.shape[0]} coords but {vals.shape[0]} values")
    shape = canvas_shape(slide_dims, downsample) if shape is None else (int(shape[0]), int(shape[1]))
    finite = np.isfinite(vals)
    x0, y0, x1, y1, keep = _footprints(coords[finite], level0_px, downsample, shape)
    v = vals[finite][keep]
    total = _paint(x0, y0, x1, y1, v, shape)
    count = _paint(x0, y0, x1, y1, np.ones_like(v), shape)
    covered = count > 0.5  # counts are integers; the cumsum leaves at most rounding noise
    canvas = np.full(shape, np.nan, dtype=np.float32)
    canvas[covered] = (total[covered] / np.rint(count[covered])).astype(np.float32)
    return canvas


#: above this sigma the blur runs on a canvas shrunk so that sigma is this many pixels, then is resized back
_FULL_RES_SIGMA_PX = 4.0


def _gaussian(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur whose cost does not grow with sigma: a wide blur (tile-sized on a 2048-px canvas, sigma ~100
    px) is computed at 1/f resolution and resized back, which loses nothing a kernel that wide would keep (3.7 s
    -> 0.2 s per heatmap on a demo slide)."""
    if sigma_px <= _FULL_RES_SIGMA_PX:
        return cv2.GaussianBlur(image, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT)
    f = sigma_px / _FULL_RES_SIGMA_PX
    h, w = image.shape
    small = cv2.resize(image, (max(1, round(w / f)), max(1, round(h / f))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), _FULL_RES_SIGMA_PX, borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def blur_canvas(canvas: np.ndarray, sigma_px: float) -> np.ndarray:
    """Normalised Gaussian blur: smooths values inside the painted area, never spreads colour outside it.

    Blurring value*weight and weight separately keeps every output a weighted mean of nearby inputs (so
    within [min, max]) and stops empty areas from dragging edge values towards 0.
    """
    if sigma_px <= 0:
        return canvas
    valid = np.isfinite(canvas)
    if not valid.any():
        return canvas
    weight = valid.astype(np.float32)
    filled = np.where(valid, canvas, 0.0).astype(np.float32)
    num, den = _gaussian(filled, sigma_px), _gaussian(weight, sigma_px)
    out = np.full(canvas.shape, np.nan, dtype=np.float32)
    ok = valid & (den > 1e-6)
    out[ok] = num[ok] / den[ok]
    lo, hi = float(np.nanmin(canvas)), float(np.nanmax(canvas))
    return np.clip(out, lo, hi, out=out)  # float rounding only; NaN stays NaN


def colorize(canvas: np.ndarray, cmap: str, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """RGB uint8 image of ``canvas`` through a matplotlib colormap (NaN -> black; mask it yourself)."""
    span = vmax - vmin if vmax > vmin else 1.0
    norm = np.clip((np.nan_to_num(canvas, nan=vmin) - vmin) / span, 0.0, 1.0)
    lut = (matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    return lut[np.rint(norm * 255).astype(np.intp)]


# ---- rendering ---------------------------------------------------------------------------------------
def render_heatmap(
    thumbnail_rgb: np.ndarray,
    thumb_downsample: float,
    coords: np.ndarray,
    level0_px: float,
    scores: np.ndarray,
    params: HeatmapParams | None = None,
    tissue_mask: np.ndarray | None = None,
    mask_downsample: float | None = None,
    slide_dims: tuple[int, int] | None = None,
    value_range: tuple[float, float] | None = None,
) -> HeatmapResult:
    """Scores -> percentiles -> canvas -> blur -> tissue mask -> colormap -> alpha blend on the thumbnail.

    The canvas is painted at the thumbnail's scale, or coarser when the thumbnail is larger than
    ``params.canvas_max_side`` (then upsampled for blending). Pixels without a tile, or outside the tissue
    mask, keep the plain thumbnail. ``slide_dims`` (level-0 (w, h)) defaults to thumbnail size x downsample.
    ``value_range`` fixes the colour scale of raw values (e.g. (0, 1) for probabilities) when percentiles are off.
    """
    params = params or HeatmapParams()
    thumb = np.asarray(thumbnail_rgb)
    if thumb.ndim != 3 or thumb.shape[2] != 3:
        raise ValueError(f"thumbnail must be (H, W, 3) RGB, got {thumb.shape}")
    th, tw = thumb.shape[:2]
    if slide_dims is None:
        slide_dims = (round(tw * thumb_downsample), round(th * thumb_downsample))
    scores = np.asarray(scores, dtype=np.float64).ravel()
    values = to_percentiles(scores) if params.percentiles else scores

    if max(th, tw) <= params.canvas_max_side:
        ds, shape = float(thumb_downsample), (th, tw)
    else:
        ds = max(float(thumb_downsample), canvas_downsample(slide_dims, params.canvas_max_side))
        shape = canvas_shape(slide_dims, ds)
    canvas = score_canvas(coords, level0_px, values, slide_dims, ds, shape=shape)
    canvas = blur_canvas(canvas, params.blur_sigma_px + params.blur_tiles * float(level0_px) / ds)
    if params.tissue_masked and tissue_mask is not None:
        if mask_downsample is None:
            raise ValueError("mask_downsample is required with tissue_mask")
        canvas[~_mask_on_canvas(tissue_mask, mask_downsample, ds, shape)] = np.nan

    if params.percentiles:
        vmin, vmax = 0.0, 1.0
    elif value_range is not None:
        vmin, vmax = value_range
    elif np.isfinite(canvas).any():
        vmin, vmax = float(np.nanmin(canvas)), float(np.nanmax(canvas))
    else:
        vmin, vmax = 0.0, 1.0
    on_thumb = canvas
    if shape != (th, tw):
        on_thumb = cv2.resize(canvas, (tw, th), interpolation=cv2.INTER_NEAREST)
    painted = np.isfinite(on_thumb)
    colour = colorize(on_thumb, params.cmap, vmin, vmax)
    overlay = thumb.copy()
    a = params.alpha
    blend = (1.0 - a) * thumb[painted].astype(np.float32) + a * colour[painted].astype(np.float32)
    overlay[painted] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return HeatmapResult(overlay_rgb=overlay, canvas=canvas, downsample=ds)


def _mask_on_canvas(mask: np.ndarray, mask_ds: float, canvas_ds: float, shape: tuple[int, int]) -> np.ndarray:
    """Resample a tissue mask (``mask_ds`` level-0 px per px) onto the canvas grid by nearest lookup."""
    m = np.asarray(mask, dtype=bool)
    h, w = shape
    ys = np.minimum(((np.arange(h) + 0.5) * canvas_ds / mask_ds).astype(np.intp), m.shape[0] - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * canvas_ds / mask_ds).astype(np.intp), m.shape[1] - 1)
    return m[np.ix_(ys, xs)]


def colorbar_legend(cmap: str, height: int = 256, width: int = 24, border: int = 1) -> np.ndarray:
    """Vertical colour bar (high at the top), RGB uint8, to paste beside an overlay."""
    ramp = np.linspace(1.0, 0.0, height, dtype=np.float32)[:, None].repeat(width, axis=1)
    bar = colorize(ramp, cmap)
    if border:
        bar[:border], bar[-border:], bar[:, :border], bar[:, -border:] = 0, 0, 0, 0
    return bar


def with_colorbar(overlay_rgb: np.ndarray, cmap: str, margin: int = 8) -> np.ndarray:
    """Overlay with a white strip on the right holding a colour bar (top = highest percentile)."""
    h, w = overlay_rgb.shape[:2]
    bar_h = max(16, int(h * 0.6))
    bar_w = max(8, min(32, w // 40))
    bar = colorbar_legend(cmap, height=min(bar_h, h), width=bar_w)
    out = np.full((h, w + bar_w + 2 * margin, 3), 255, dtype=np.uint8)
    out[:, :w] = overlay_rgb
    top = (h - bar.shape[0]) // 2
    out[top : top + bar.shape[0], w + margin : w + margin + bar_w] = bar
    return out


# ---- top / bottom tiles ------------------------------------------------------------------------------
def save_top_tiles(
    reader: SlideReader,
    coords: np.ndarray,
    geometry: TileGeometry,
    scores: np.ndarray,
    k: int,
    out_dir: str | Path,
    prefix: str,
    bottom: bool = False,
) -> list[dict]:
    """Read the top-k (or bottom-k) tiles with ``reader.read_tile`` and save them as PNGs.

    Files are named ``<prefix>_top|bottom<rank>_score<score>_x<x>_y<y>.png`` (rank 1 = most/least
    attended). Returns one record per tile: ``rank, index, x, y, score, path``.
    """
    coords = np.asarray(coords).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.shape[0] != coords.shape[0]:
        raise ValueError(f"{coords.shape[0]} coords but {scores.shape[0]} scores")
    out_dir = Path(out_dir)
    kind = "bottom" if bottom else "top"
    records = []
    for rank, i in enumerate(ranked_indices(scores, k, bottom=bottom), start=1):
        x, y = int(coords[i, 0]), int(coords[i, 1])
        tile = reader.read_tile((x, y), geometry)
        path = out_dir / f"{prefix}_{kind}{rank:03d}_score{scores[i]:+.4f}_x{x}_y{y}.png"
        write_png_atomic(path, tile)
        records.append({"rank": rank, "index": int(i), "x": x, "y": y, "score": float(scores[i]), "path": str(path)})
    return records


__all__ = [
    "HeatmapParams",
    "HeatmapResult",
    "layer_legend",
    "legend_caption",
    "legend_ticks",
    "blur_canvas",
    "canvas_downsample",
    "canvas_shape",
    "colorbar_legend",
    "colorize",
    "ranked_indices",
    "render_heatmap",
    "save_top_tiles",
    "score_canvas",
    "to_percentiles",
    "with_colorbar",
]


# ---- score layers ------------------------------------------------------------------------------------
def legend_labels(layer: ScoreLayer) -> tuple[str, str, str]:
    """(title, low label, high label) of a layer's colour bar: percentiles for relative scores, 0-1 for
    probabilities."""
    what = f"{layer.name} ({layer.class_name})" if layer.class_name else layer.name
    if layer.relative:
        return f"{what}, within-slide percentile", "0", "100"
    return f"{what}, probability", "0.0", "1.0"


def legend_ticks(layer: ScoreLayer, n: int = 5) -> list[str]:
    """``n`` evenly spaced colour-bar labels, low to high: percentiles 0-100 or probabilities 0.0-1.0."""
    if layer.relative:
        return [f"{v:g}" for v in np.linspace(0, 100, n)]
    return [f"{v:.2f}" for v in np.linspace(0, 1, n)]


def legend_caption(layer: ScoreLayer, model: str = "") -> str:
    """The legend's second line: what is coloured, on which scale, by which model (``"clam_sb fold 0"``)."""
    what, _, _ = legend_labels(layer)
    return f"colour: {what}" + (f" | model: {model}" if model else "")


def render_score_layer(
    thumbnail_rgb: np.ndarray,
    thumb_downsample: float,
    layer: ScoreLayer,
    coords: np.ndarray,
    level0_px: float,
    params: HeatmapParams | None = None,
    *,
    tissue_mask: np.ndarray | None = None,
    mask_downsample: float | None = None,
    slide_dims: tuple[int, int] | None = None,
    title: str | None = None,
    model: str = "",
) -> np.ndarray:
    """Paint any score layer with a labelled legend: attention / contribution / ranks as within-slide
    percentiles, probabilities on the absolute 0-1 scale. Returns the RGB image (overlay + legend strip).

    ``model`` names the exact model (family + fold, or registered name + version) on the legend line."""
    result = paint_score_layer(thumbnail_rgb, thumb_downsample, layer, coords, level0_px, params,
                               tissue_mask=tissue_mask, mask_downsample=mask_downsample, slide_dims=slide_dims)
    return layer_legend(result.overlay_rgb, (params or HeatmapParams()).cmap, layer, title, model)


def layer_legend(overlay_rgb: np.ndarray, cmap: str, layer: ScoreLayer, title: str | None = None,
                 model: str = "") -> np.ndarray:
    """:func:`with_legend` with a layer's own title, ticks and caption (one place, so every image agrees)."""
    name, low, high = legend_labels(layer)
    return with_legend(overlay_rgb, cmap, title or name, low, high, ticks=legend_ticks(layer),
                       caption=legend_caption(layer, model))


def paint_score_layer(
    thumbnail_rgb: np.ndarray,
    thumb_downsample: float,
    layer: ScoreLayer,
    coords: np.ndarray,
    level0_px: float,
    params: HeatmapParams | None = None,
    *,
    tissue_mask: np.ndarray | None = None,
    mask_downsample: float | None = None,
    slide_dims: tuple[int, int] | None = None,
) -> HeatmapResult:
    """The overlay of :func:`render_score_layer` before its legend is added (the dashboard draws tissue
    contours on it first): the layer's kind picks percentiles or the absolute 0-1 scale."""
    params = replace(params or HeatmapParams(), percentiles=layer.relative)
    return render_heatmap(thumbnail_rgb, thumb_downsample, coords, level0_px, layer.values, params,
                          tissue_mask=tissue_mask, mask_downsample=mask_downsample, slide_dims=slide_dims,
                          value_range=None if layer.relative else (0.0, 1.0))


def with_legend(overlay_rgb: np.ndarray, cmap: str, title: str, low: str, high: str, *,
                ticks: list[str] | None = None, caption: str = "") -> np.ndarray:
    """Overlay with a title line (and an optional caption line) on top and a colour bar on the right,
    labelled at evenly spaced ``ticks`` (low to high; default just ``low`` and ``high``)."""
    labels = list(ticks) if ticks else [low, high]
    h, w = overlay_rgb.shape[:2]
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, max(0.35, min(0.6, w / 1400)), 1
    (_, th), _ = cv2.getTextSize("Ag", font, scale, thick)
    label_w = max(cv2.getTextSize(t, font, scale, thick)[0][0] for t in labels)
    bar_h = max(16, int(h * 0.6))
    bar_w = max(8, min(32, w // 40))
    bar = colorbar_legend(cmap, height=min(bar_h, h), width=bar_w)
    margin, line = 8, th + 12
    head = line * (2 if caption else 1)
    width = w + bar_w + label_w + 3 * margin + 4
    lines = [title, caption] if caption else [title]
    width = max(width, *(cv2.getTextSize(t, font, scale, thick)[0][0] + 2 * margin for t in lines))
    out = np.full((h + head, width, 3), 255, dtype=np.uint8)
    out[head:, :w] = overlay_rgb
    for k, text in enumerate(lines):
        cv2.putText(out, text, (margin, th + 4 + k * line), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    top = head + (h - bar.shape[0]) // 2
    x0 = w + margin
    out[top : top + bar.shape[0], x0 : x0 + bar_w] = bar
    span = bar.shape[0] - 1
    for k, text in enumerate(labels):  # low at the bottom, high at the top
        y = top + span - round(k * span / max(1, len(labels) - 1))
        out[y, x0 + bar_w : x0 + bar_w + 4] = 0  # tick mark
        cv2.putText(out, text, (x0 + bar_w + 6, min(top + span, max(top + th, y + th // 2))), font, scale,
                    (0, 0, 0), thick, cv2.LINE_AA)
    return out
