"""Tissue segmentation (methods.md section 0, CLAM style) with a pen-ink / artefact filter.

On a low-resolution image of the slide: HSV -> median-blurred saturation -> threshold (fixed or Otsu) ->
remove ink and dark artefacts -> morphological close -> contours with holes -> drop small pieces and holes.
Area thresholds are in units of a 512 x 512 level-0 tile, so they mean the same at every downsample.

Per-slide fixes: :func:`load_overrides` reads a CSV (``slide_id`` + any :class:`TissueParams` field) so one
odd slide can be re-segmented without touching the rest.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import cv2
import numpy as np

from slidemil.slides.reader import SlideReader

REF_AREA = 512 * 512  # level-0 px: the unit of a_t and a_h


@dataclass(frozen=True)
class TissueParams:
    """Defaults follow CLAM except the area filters (CLAM's a_t=100 drops everything on a small slide)."""

    seg_downsample: float = 16.0  # segment at about this level-0 downsample (coarsest level not coarser)
    median_kernel: int = 7
    sat_threshold: int = 8
    use_otsu: bool = False
    close_kernel: int = 4
    a_t: float = 1.0  # min tissue piece area, x 512^2 level-0 px
    a_h: float = 1.0  # min hole area, x 512^2 level-0 px
    max_n_holes: int = 8
    filter_pen: bool = True  # remove red/green/blue ink and near-black artefacts
    dark_value: int = 40  # HSV value below which a pixel is an artefact (ink blot, folded edge, shadow)
    bright_value: int = 235  # pixels this bright and barely saturated (< 2 x sat_threshold + 10) are glass

    def __post_init__(self) -> None:
        if self.median_kernel < 1 or self.median_kernel % 2 == 0:
            raise ValueError(f"median_kernel must be odd and >= 1, got {self.median_kernel}")
        if not 0 <= self.sat_threshold <= 255:
            raise ValueError(f"sat_threshold must be in 0..255, got {self.sat_threshold}")
        if self.seg_downsample < 1:
            raise ValueError(f"seg_downsample must be >= 1, got {self.seg_downsample}")
        if self.a_t < 0 or self.a_h < 0 or self.max_n_holes < 0 or self.close_kernel < 0:
            raise ValueError("a_t, a_h, max_n_holes and close_kernel must be >= 0")

    @classmethod
    def from_dict(cls, d: dict) -> TissueParams:
        return cls().with_overrides(d)

    def with_overrides(self, overrides: dict) -> TissueParams:
        """Copy with values parsed from strings (CSV cells); empty cells keep the current value."""
        types = {f.name: f.type for f in fields(self)}
        changes = {}
        for key, raw in overrides.items():
            if key not in types:
                raise ValueError(f"unknown tissue parameter {key!r}; known: {sorted(types)}")
            if raw is None or (isinstance(raw, str) and raw.strip() == ""):
                continue
            changes[key] = _parse(key, raw, types[key])
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


def _parse(key: str, raw, typ: str):
    try:
        if typ == "bool":
            if isinstance(raw, bool):
                return raw
            value = str(raw).strip().lower()
            if value not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return value in ("true", "1", "yes")
        if typ == "int":
            f = float(raw)
            if f != int(f):
                raise ValueError(raw)
            return int(f)
        return float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"tissue parameter {key}: cannot parse {raw!r} as {typ}") from None


def load_overrides(csv_path: str | Path) -> dict[str, dict[str, str]]:
    """``{slide_id: {param: value}}`` from a CSV; empty cells are dropped; bad columns fail naming them."""
    out: dict[str, dict[str, str]] = {}
    known = {f.name for f in fields(TissueParams)}
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "slide_id" not in cols:
            raise ValueError(f"{csv_path}: needs a slide_id column")
        unknown = [c for c in cols if c != "slide_id" and c not in known]
        if unknown:
            raise ValueError(f"{csv_path}: unknown column(s) {unknown}; allowed: {sorted(known)}")
        for lineno, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            sid = row.pop("slide_id")
            if not sid:
                raise ValueError(f"{csv_path} line {lineno}: empty slide_id")
            values = {k: v for k, v in row.items() if v}
            try:
                TissueParams().with_overrides(values)
            except ValueError as exc:
                raise ValueError(f"{csv_path} line {lineno} ({sid}): {exc}") from None
            out[sid] = values
    return out


# ---- pixel-level mask --------------------------------------------------------------------------------
def ink_mask(rgb: np.ndarray, hsv: np.ndarray, dark_value: int = 40) -> np.ndarray:
    """Pen ink (green, blue, red) and near-black artefacts; H&E is pink/purple, never green or pure blue.

    OpenCV hue runs 0..180: green/cyan ink ~40-100, blue ink ~100-122 (hematoxylin is purple, >= ~125),
    red ink is saturated red whose blue channel stays low (eosin pink keeps blue high).
    """
    h, s, v = hsv[..., 0].astype(np.int16), hsv[..., 1].astype(np.int16), hsv[..., 2].astype(np.int16)
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    green = (h >= 35) & (h < 100) & (s > 30)
    blue = (h >= 100) & (h < 122) & (s > 50)
    red = ((h <= 10) | (h >= 165)) & (s > 80) & (r > 40) & (b < 0.68 * r) & (g < 0.5 * r)
    dark = v < dark_value
    return green | blue | red | dark


def tissue_mask_from_rgb(rgb: np.ndarray, params: TissueParams, downsample: float = 1.0) -> np.ndarray:
    """Boolean tissue mask of ``rgb`` (an image at ``downsample`` level-0 px per px)."""
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat = cv2.medianBlur(hsv[..., 1], params.median_kernel) if params.median_kernel > 1 else hsv[..., 1]
    if params.use_otsu:
        _, mask = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    else:
        _, mask = cv2.threshold(sat, params.sat_threshold, 255, cv2.THRESH_BINARY)
    glass = (hsv[..., 2] >= params.bright_value) & (sat < 2 * params.sat_threshold + 10)
    mask[glass] = 0
    if params.filter_pen:
        ink = ink_mask(rgb, hsv, params.dark_value)
        ink = cv2.dilate(ink.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # ink edges are antialiased
        mask[ink] = 0
    if params.close_kernel > 0:
        kernel = np.ones((params.close_kernel, params.close_kernel), np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    contours = _filtered_contours(mask, params, downsample)
    out = np.zeros(mask.shape, np.uint8)
    for outer, holes in contours:
        cv2.drawContours(out, [outer], -1, 1, thickness=cv2.FILLED)
        if holes:
            cv2.drawContours(out, holes, -1, 0, thickness=cv2.FILLED)
    return out.astype(bool)


def _filtered_contours(mask: np.ndarray, params: TissueParams, downsample: float):
    """[(outer contour, [holes])] at mask scale after the area filters (areas in level-0 units)."""
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]
    unit = REF_AREA / (downsample * downsample)
    min_tissue, min_hole = params.a_t * unit, params.a_h * unit
    result = []
    for i, (_, _, first_child, parent) in enumerate(hierarchy):
        if parent != -1:
            continue
        holes = []
        child = first_child
        while child != -1:
            holes.append(contours[child])
            child = hierarchy[child][0]
        hole_areas = [cv2.contourArea(h) for h in holes]
        area = cv2.contourArea(contours[i]) - sum(hole_areas)
        if area <= 0 or area < min_tissue:
            continue
        kept = [
            h for h, a in sorted(zip(holes, hole_areas, strict=True), key=lambda t: -t[1]) if a > min_hole
        ][: params.max_n_holes]
        result.append((contours[i], kept))
    return result


# ---- slide-level segmentation ------------------------------------------------------------------------
@dataclass
class TissueSegmentation:
    """``mask`` at ``downsample`` level-0 px per px; ``contours``: [outer, *holes] arrays in level-0 px."""

    mask: np.ndarray
    downsample: float
    contours: list[list[np.ndarray]]
    slide_dims: tuple[int, int]

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def coverage(self, xs: np.ndarray, ys: np.ndarray, size_level0: float) -> np.ndarray:
        """Fraction of each square footprint (top-left level-0 ``xs, ys``, side ``size_level0``) in tissue.

        Summed-area table over the mask; footprint edges are mapped to mask pixels by rounding, and parts
        beyond the mask count as background.
        """
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        h, w = self.mask.shape
        sat = np.zeros((h + 1, w + 1), np.int64)
        sat[1:, 1:] = self.mask.astype(np.int64).cumsum(0).cumsum(1)
        x0 = np.round(xs / self.downsample).astype(np.int64)
        y0 = np.round(ys / self.downsample).astype(np.int64)
        x1 = np.round((xs + size_level0) / self.downsample).astype(np.int64)
        y1 = np.round((ys + size_level0) / self.downsample).astype(np.int64)
        area = np.maximum((x1 - x0) * (y1 - y0), 1)
        cx0, cy0 = np.clip(x0, 0, w), np.clip(y0, 0, h)
        cx1, cy1 = np.clip(x1, 0, w), np.clip(y1, 0, h)
        inside = sat[cy1, cx1] - sat[cy0, cx1] - sat[cy1, cx0] + sat[cy0, cx0]
        return inside / area


def segment_tissue(reader: SlideReader, params: TissueParams) -> TissueSegmentation:
    """Segment the slide on a low-resolution image (never level 0 of a large slide)."""
    w0, h0 = reader.dimensions
    max_side = max(64, int(np.ceil(max(w0, h0) / params.seg_downsample)))
    image, downsample = reader.thumbnail(max_side=max_side)
    mask = tissue_mask_from_rgb(image, params, downsample)
    contours = []
    for outer, holes in _filtered_contours(
        mask.astype(np.uint8), replace(params, a_t=0.0, a_h=0.0), downsample
    ):
        rings = [outer, *holes]
        contours.append([(r.reshape(-1, 2).astype(np.float64) + 0.5) * downsample for r in rings])
    return TissueSegmentation(mask=mask, downsample=float(downsample), contours=contours, slide_dims=(w0, h0))
