"""Where segmenters look: one frame per tissue contour (its bounding box, long side <= 1024 px), rendered from
the slide pyramid (methods.md section D: SAM runs once per contour, not on one whole-slide thumbnail, so a
small tissue piece still gets up to 1024 px)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from slidemil.segmenters.segments import Frame, frame_downsample
from slidemil.slides.geometry import best_level_for_downsample
from slidemil.slides.reader import SlideReader, resize_rgb
from slidemil.utils.geojson import polygons


def contour_boxes(tissue_geojson: dict) -> list[tuple[int, int, int, int]]:
    """Level-0 ``(x0, y0, x1, y1)`` of each tissue polygon's outer ring (holes do not widen a box)."""
    boxes = []
    for rings in polygons(tissue_geojson):
        if not rings:
            continue
        ring = np.asarray(rings[0], dtype=np.float64).reshape(-1, 2)
        x0, y0 = np.floor(ring.min(0)).astype(int)
        x1, y1 = np.ceil(ring.max(0)).astype(int)
        boxes.append((int(x0), int(y0), int(x1), int(y1)))
    return boxes


def contour_frames(boxes: Iterable[tuple[int, int, int, int]], dimensions: tuple[int, int],
                   max_side: int = 1024) -> list[Frame]:
    """A frame per box, clipped to the slide, at d = 2^ceil(log2(long side / max_side)); with no box (no
    tissue contours recorded) the whole slide is one frame."""
    w0, h0 = dimensions
    frames = []
    for x0, y0, x1, y1 in list(boxes) or [(0, 0, w0, h0)]:
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w0, x1), min(h0, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        d = frame_downsample(x1 - x0, y1 - y0, max_side)
        frames.append(Frame(x0, y0, max(1, int(np.ceil((x1 - x0) / d))), max(1, int(np.ceil((y1 - y0) / d))), d))
    return frames


def render_frame(reader: SlideReader, frame: Frame) -> np.ndarray:
    """The frame's RGB pixels (height, width, 3) from the coarsest pyramid level fine enough for it."""
    level = best_level_for_downsample(reader.level_downsamples, frame.downsample)
    ds = reader.level_downsamples[level]
    w0 = min(frame.width * frame.downsample, reader.dimensions[0] - frame.x0)
    h0 = min(frame.height * frame.downsample, reader.dimensions[1] - frame.y0)
    region = reader.read_region((frame.x0, frame.y0), level, (max(1, round(w0 / ds)), max(1, round(h0 / ds))))
    out = np.full((frame.height, frame.width, 3), 255, dtype=np.uint8)  # beyond the slide edge: glass
    fw, fh = max(1, round(w0 / frame.downsample)), max(1, round(h0 / frame.downsample))
    out[:fh, :fw] = resize_rgb(region, fw, fh)[: frame.height, : frame.width]
    return out
