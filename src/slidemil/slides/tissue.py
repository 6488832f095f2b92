"""Tissue segmentation (methods.md section 0, CLAM style) with a pen-ink / artefact filter.

On a low-resolution image of the slide: HSV -> median-blurred saturation -> threshold (fixed or Otsu) ->
remove glass, ink and dark artefacts -> morphological close -> contours with holes -> drop small pieces and
small holes, keep the largest ``max_n_holes`` holes. Area thresholds are in units of a 512 x 512 level-0
tile, so they mean the same thing at every downsample.

Defaults that differ from CLAM, and why:

- ``seg_downsample=64`` as in CLAM, but the mask keeps at least ``min_mask_side`` pixels on its longer side:
  a 3k-px slide at 64x would give a 46-px mask on which the 7-px median blur erases everything.
- ``a_t=1`` / ``a_h=1`` (CLAM: 100 / 16 for 40x gigapixel slides). ``a_t=100`` is 26 Mpx of level 0, more
  than a whole 2220 x 2967 slide; one 512 x 512 tile is the smallest piece worth tiling at 20x.
- ``filter_pen=True``: ink (red, green, blue), glass and near-black artefacts are removed (see
  :func:`ink_mask`); switch it off for stains whose colours collide with the ink rules.

Per-slide fixes: :func:`load_overrides` reads a CSV (``slide_id`` + any :class:`TissueParams` field) so one
odd slide can be re-segmented without touching the rest.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import cv2
import numpy as np

from slidemil.slides.masks import MaskCoverage
from slidemil.slides.reader import SlideReader

REF_AREA = 512 * 512  # level-0 px: the unit of a_t and a_h

# OpenCV hue runs 0..179 (degrees / 2). H&E lives in 125..172: haematoxylin purple-blue ~125-150, eosin pink
# ~150-172. Red ink sits at >= 173 or <= 8 (its blue and green channels are nearly equal, eosin keeps blue
# well above green), green/cyan ink 30-100 and blue ink 100-130, where H&E never goes.
RED_HUE_MIN, RED_HUE_MAX_WRAP = 173, 8
GREEN_HUES = (30, 100)
BLUE_HUES = (100, 130)


@dataclass(frozen=True)
class TissueParams:
    """Segmentation settings; every field can be overridden per slide (see :func:`load_overrides`)."""

    seg_downsample: float = 64.0  # target level-0 px per mask px (the nearest level / thumbnail is used)
    min_mask_side: int = 512  # ... but the mask's longer side keeps at least this many px (small slides)
    median_kernel: int = 7  # median blur of the saturation channel (odd)
    sat_threshold: int = 8  # saturation (0-255) above which a pixel is tissue; ignored with use_otsu
    use_otsu: bool = False
    close_kernel: int = 4  # morphological closing (mask px); 0 = off
    a_t: float = 1.0  # drop tissue pieces (net of holes) smaller than a_t x 512^2 level-0 px
    a_h: float = 1.0  # drop (fill) holes smaller than a_h x 512^2 level-0 px
    max_n_holes: int = 8  # keep at most this many holes per piece (the largest)
    filter_pen: bool = True  # remove ink (red/green/blue), near-black artefacts; glass is always removed
    bright_value: int = 235  # brighter than this (HSV value) and barely saturated = glass, not tissue
    dark_value: int = 40  # darker than this (HSV value) = ink blot / debris / folded edge, not tissue
    ink_saturation: int = 80  # saturation of an ink *core* (red / green; blue ink needs 1.5x this)
    ink_halo_saturation: int = 15  # fainter ink-coloured pixels touching a core (blurred pen edges) are ink
    ink_max_texture: float = 12.0  # red ink cores are smooth (local std of value < this); red blood is not

    def __post_init__(self) -> None:
        if self.median_kernel < 1 or self.median_kernel % 2 == 0:
            raise ValueError(f"median_kernel must be odd and >= 1, got {self.median_kernel}")
        for name in ("sat_threshold", "bright_value", "dark_value", "ink_saturation", "ink_halo_saturation"):
            if not 0 <= getattr(self, name) <= 255:
                raise ValueError(f"{name} must be in 0..255, got {getattr(self, name)}")
        if self.seg_downsample < 1:
            raise ValueError(f"seg_downsample must be >= 1, got {self.seg_downsample}")
        if self.min_mask_side < 1:
            raise ValueError(f"min_mask_side must be >= 1, got {self.min_mask_side}")
        for name in ("a_t", "a_h", "max_n_holes", "close_kernel"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict) -> TissueParams:
        return cls().with_overrides(d)

    def with_overrides(self, overrides: dict) -> TissueParams:
        """Copy with values parsed from strings (CSV cells) or typed values; empty cells keep the value."""
        types = {f.name: f.type for f in fields(self)}
        changes = {}
        for key, raw in overrides.items():
            if key not in types:
                raise ValueError(f"unknown tissue parameter {key!r}; known: {sorted(types)}")
            if raw is None or (isinstance(raw, str) and raw.strip() == ""):
                continue
            changes[key] = _parse(key, raw, types[key])
        try:
            return replace(self, **changes)
        except ValueError as exc:  # range checks of __post_init__
            raise ValueError(f"tissue parameters {changes}: {exc}") from None

    def to_dict(self) -> dict:
        return asdict(self)


def _parse(key: str, raw: object, typ: str) -> bool | int | float:
    try:
        if typ == "bool":
            if isinstance(raw, bool):
                return raw
            value = str(raw).strip().lower()
            if value not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return value in ("true", "1", "yes")
        if isinstance(raw, bool):
            raise ValueError(raw)
        number = float(raw)  # type: ignore[arg-type]
        if not math.isfinite(number):
            raise ValueError(raw)
        if typ == "int":
            if number != int(number):
                raise ValueError(raw)
            return int(number)
        return number
    except (TypeError, ValueError):
        raise ValueError(f"tissue parameter {key}: cannot parse {raw!r} as {typ}") from None


def load_overrides(csv_path: str | Path) -> dict[str, dict[str, str]]:
    """``{slide_id: {param: value}}`` from a CSV; empty cells are dropped; errors name the line/column."""
    out: dict[str, dict[str, str]] = {}
    known = {f.name for f in fields(TissueParams)}
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "slide_id" not in cols:
            raise ValueError(f"{csv_path}: needs a slide_id column, found {cols}")
        unknown = [c for c in cols if c != "slide_id" and c not in known]
        if unknown:
            raise ValueError(f"{csv_path}: unknown column(s) {unknown}; allowed: {sorted(known)}")
        for lineno, row in enumerate(reader, start=2):
            if None in row:
                raise ValueError(f"{csv_path} line {lineno}: more cells than header columns")
            row = {k.strip(): (v or "").strip() for k, v in row.items()}
            sid = row.pop("slide_id")
            if not sid:
                raise ValueError(f"{csv_path} line {lineno}: empty slide_id")
            if sid in out:
                raise ValueError(f"{csv_path} line {lineno}: slide_id {sid!r} appears twice")
            values = {k: v for k, v in row.items() if v}
            for key, value in values.items():
                try:
                    TissueParams().with_overrides({key: value})
                except ValueError as exc:
                    raise ValueError(f"{csv_path} line {lineno} ({sid}), column {key}: {exc}") from None
            out[sid] = values
    return out


# ---- pixel-level mask --------------------------------------------------------------------------------
def ink_mask(rgb: np.ndarray, params: TissueParams) -> np.ndarray:
    """Pen ink (red, green, blue) and near-black artefacts, as a bool mask.

    Hysteresis: strongly coloured *cores* are ink; fainter ink-coloured pixels count only when connected to a
    core. That removes the blurred halo of an out-of-focus pen stroke without touching pale eosin elsewhere.
    Red cores must also be smooth (out-of-focus ink) so that red blood cells, textured, stay tissue.
    Colours are judged on a median-blurred copy (the hue of one noisy pixel means nothing), texture on
    the raw image.
    """
    k = params.median_kernel if params.median_kernel <= min(rgb.shape[:2]) else 1
    smooth = cv2.medianBlur(rgb, k) if k > 1 else rgb
    hsv = cv2.cvtColor(smooth, cv2.COLOR_RGB2HSV)
    texture = _local_std(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    h, s, v = (hsv[..., i].astype(np.int16) for i in range(3))
    red_hue = (h >= RED_HUE_MIN) | (h <= RED_HUE_MAX_WRAP)
    green_hue = (h >= GREEN_HUES[0]) & (h < GREEN_HUES[1])
    blue_hue = (h >= BLUE_HUES[0]) & (h < BLUE_HUES[1])
    core_s = params.ink_saturation
    core = (
        (red_hue & (s > core_s) & (texture < params.ink_max_texture))  # blood is red but textured
        | (green_hue & (s > core_s // 2))  # H&E is never green: a weaker core is safe
        | (blue_hue & (s > core_s * 3 // 2))  # IHC / bluish haematoxylin reaches s ~ 100
        | (v < params.dark_value)
    )
    if not core.any():
        return core
    halo_s = params.ink_halo_saturation
    # dark, saturated red-purple: the centre of thick red/black ink (eosin and blood are never this dark)
    dark_ink = (v < 110) & (s > 90) & ((h >= 160) | (h <= RED_HUE_MAX_WRAP))
    # pale pink-grey fringe of red ink on glass: red hue drifts towards eosin as the ink fades out
    pale_red = (h >= RED_HUE_MIN - 8) & (s > halo_s) & (s < 60) & (v > 180)
    # out-of-focus ink of any colour is smooth; tissue at the same darkness has texture
    smooth_dark = (texture < params.ink_max_texture / 2) & (s > halo_s) & (v < 200)
    weak = ((red_hue | green_hue | blue_hue) & (s > halo_s)) | pale_red | dark_ink | smooth_dark | core
    n, labels = cv2.connectedComponents(weak.astype(np.uint8), connectivity=8)
    has_core = np.zeros(n, bool)
    has_core[np.unique(labels[core])] = True
    has_core[0] = False
    return has_core[labels]


def _local_std(channel: np.ndarray, window: int = 9) -> np.ndarray:
    """Standard deviation of ``channel`` over a ``window`` box around each pixel."""
    x = channel.astype(np.float32)
    mean = cv2.blur(x, (window, window))
    return np.sqrt(np.maximum(cv2.blur(x * x, (window, window)) - mean * mean, 0.0))


def tissue_mask_from_rgb(rgb: np.ndarray, params: TissueParams, downsample: float = 1.0) -> np.ndarray:
    """Boolean tissue mask of ``rgb`` (an image at ``downsample`` level-0 px per px)."""
    mask, _ = _mask_and_pieces(rgb, params, downsample)
    return mask


def _mask_and_pieces(rgb: np.ndarray, params: TissueParams, downsample: float):
    """(final bool mask, [(outer, [holes])] at mask scale) -- one pass so both always agree."""
    rgb = np.ascontiguousarray(np.asarray(rgb)[..., :3], dtype=np.uint8)
    k = params.median_kernel if params.median_kernel <= min(rgb.shape[:2]) else 1
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat = cv2.medianBlur(hsv[..., 1], k) if k > 1 else hsv[..., 1]
    if params.use_otsu:
        _, mask = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    else:
        _, mask = cv2.threshold(sat, params.sat_threshold, 255, cv2.THRESH_BINARY)
    # bright, barely coloured = glass (JPEG noise and colour casts push glass saturation just over 8)
    glass = (hsv[..., 2] >= params.bright_value) & (sat < 2 * params.sat_threshold + 10)
    mask[glass] = 0
    if params.filter_pen:
        ink = ink_mask(rgb, params)
        ink = cv2.dilate(ink.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # anti-aliased ink edges
        mask[ink] = 0
    if params.close_kernel > 0:
        kernel = np.ones((params.close_kernel, params.close_kernel), np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return _filter_pieces(mask, params, downsample)


def _filter_pieces(mask: np.ndarray, params: TissueParams, downsample: float):
    """Area filters on the contour tree; returns the redrawn mask and the kept (outer, holes) pieces.

    RETR_TREE is RETR_CCOMP plus nesting: an outer contour's children are its holes (as in CLAM), and a piece
    lying inside another piece's hole is drawn after that hole, so it is not erased.
    """
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros(mask.shape, np.uint8)
    if hierarchy is None:
        return out.astype(bool), []
    hierarchy = hierarchy[0]
    depth = np.zeros(len(contours), int)
    for i in range(len(contours)):
        parent = hierarchy[i][3]
        while parent != -1:
            depth[i] += 1
            parent = hierarchy[parent][3]
    unit = REF_AREA / (downsample * downsample)  # one 512 x 512 level-0 tile, in mask px
    min_tissue, min_hole = params.a_t * unit, params.a_h * unit
    pieces = []
    for i in sorted(np.flatnonzero(depth % 2 == 0), key=lambda j: depth[j]):
        holes, child = [], hierarchy[i][2]
        while child != -1:
            holes.append(contours[child])
            child = hierarchy[child][0]
        hole_areas = [cv2.contourArea(hc) for hc in holes]
        # +perimeter/2: contours run through boundary pixel centres, so 1-px pieces have contourArea 0
        area = cv2.contourArea(contours[i]) + cv2.arcLength(contours[i], True) / 2 - sum(hole_areas)
        if area <= 0 or area < min_tissue:
            continue
        ranked = sorted(zip(hole_areas, range(len(holes)), strict=True), reverse=True)
        kept = [holes[j] for a, j in ranked if a > 0 and a >= min_hole][: params.max_n_holes]
        cv2.drawContours(out, [contours[i]], -1, 1, thickness=cv2.FILLED)
        if kept:
            cv2.drawContours(out, kept, -1, 0, thickness=cv2.FILLED)
            # a hole's own boundary pixels are tissue (findContours traces holes through tissue pixels)
            cv2.drawContours(out, kept, -1, 1, thickness=1)
        pieces.append((contours[i], kept))
    return out.astype(bool), pieces


# ---- slide-level segmentation ------------------------------------------------------------------------
@dataclass
class TissueSegmentation:
    """Result of :func:`segment_tissue`.

    ``mask``: bool (h, w), pixel (i, j) covers level-0 ``[j*ds, (j+1)*ds) x [i*ds, (i+1)*ds)`` with
    ``ds = downsample``; ``contours``: one ``[outer, *holes]`` list of (n, 2) float arrays per tissue piece,
    in level-0 px through the centres of boundary mask pixels; ``slide_dims``: level-0 (w, h).
    """

    mask: np.ndarray
    downsample: float
    contours: list[list[np.ndarray]]
    slide_dims: tuple[int, int]
    _coverage: MaskCoverage | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide area inside the tissue mask."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def is_empty(self) -> bool:
        return not self.contours

    def coverage(self, xs: np.ndarray, ys: np.ndarray, size_level0: float) -> np.ndarray:
        """Fraction of each square footprint (top-left level-0 ``xs, ys``, side ``size_level0``) in tissue.

        Exact by area (see :class:`~slidemil.slides.masks.MaskCoverage`); parts of a footprint beyond the
        mask (slide edge) count as background.
        """
        if self._coverage is None:
            self._coverage = MaskCoverage(self.mask, self.downsample)
        return self._coverage.squares(xs, ys, size_level0)


def seg_downsample_for(dimensions: tuple[int, int], params: TissueParams) -> float:
    """Downsample to segment at: ``seg_downsample``, made finer so the mask keeps ``min_mask_side`` px."""
    longest = max(dimensions)
    return max(1.0, min(params.seg_downsample, longest / params.min_mask_side))


def segment_tissue(reader: SlideReader, params: TissueParams) -> TissueSegmentation:
    """Segment the slide on a low-resolution image (read from the coarsest level with enough pixels).

    No tissue is not an error here: the result is empty (``contours == []``, all-False mask) and the caller
    decides (the tiling stage raises :class:`~slidemil.slides.errors.NoTissueError`).
    """
    w0, h0 = reader.dimensions
    target = seg_downsample_for((w0, h0), params)
    image, downsample = reader.thumbnail(max_side=max(1, math.floor(max(w0, h0) / target)))
    mask, pieces = _mask_and_pieces(image, params, downsample)
    contours = [
        [(ring.reshape(-1, 2).astype(np.float64) + 0.5) * downsample for ring in (outer, *holes)]
        for outer, holes in pieces
    ]
    return TissueSegmentation(mask=mask, downsample=float(downsample), contours=contours, slide_dims=(w0, h0))
