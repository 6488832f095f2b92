"""The segmenter contract and its registry.

A segmenter turns one slide (its pixels, tissue contours, tiles and, for some, tile features) into
:class:`~slidemil.segmenters.segments.Segments`. Mask segmenters (SAM, SLIC) implement :meth:`masks` and share
:func:`~slidemil.segmenters.segments.masks_to_segments`; a segmenter that groups tiles directly (k-means)
overrides :meth:`Segmenter.segment`. Names are explicit: ``sam:vit_b`` is SAM, ``slic`` and ``kmeans`` are the
offline alternatives and never called SAM (methods.md section D).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from slidemil.segmenters.frames import contour_boxes, contour_frames
from slidemil.segmenters.segments import Frame, SegmentMask, Segments, masks_to_segments
from slidemil.slides.reader import SlideReader


@dataclass
class SlideInput:
    """One slide as a segmenter sees it: tile coordinates and footprint (level 0), tissue contour boxes, the
    open slide (mask segmenters) and the tile features (k-means)."""

    slide_id: str
    coords: np.ndarray  # (N, 2) int64 level-0 top-left
    tile_level0_px: float
    dimensions: tuple[int, int]
    boxes: list[tuple[int, int, int, int]]
    reader: SlideReader | None = None
    features: np.ndarray | None = None

    @classmethod
    def from_tissue(cls, slide_id: str, coords: np.ndarray, tile_level0_px: float, tissue_geojson: dict | None,
                    reader: SlideReader, features: np.ndarray | None = None) -> SlideInput:
        """The input the segment stage and serving both build: frames from the tissue contours' boxes (no
        contours: no frames, every tile unsegmented)."""
        boxes = contour_boxes(tissue_geojson) if tissue_geojson else []
        return cls(slide_id, np.asarray(coords), float(tile_level0_px), reader.dimensions, boxes, reader=reader,
                   features=features)


class Segmenter:
    """Base class; subclasses set ``kind`` (registry name) and implement :meth:`masks` or :meth:`segment`."""

    kind: ClassVar[str] = ""
    needs_features: ClassVar[bool] = False
    needs_pixels: ClassVar[bool] = True

    def __init__(self, variant: str | None = None, *, max_side: int = 1024, **settings: Any):
        if variant is not None:
            raise ValueError(f"segmenter {self.kind!r} has no variants (got {self.kind}:{variant})")
        self.max_side = int(max_side)
        self.settings = dict(settings)

    @property
    def id(self) -> str:
        """The name this segmenter is recorded under (layer attributes, bundles)."""
        return self.kind

    def fingerprint(self) -> dict[str, Any]:
        """Everything that decides the output (goes into the segments layer's resume key)."""
        return {"id": self.id, "max_side": self.max_side, **self.settings}

    def frames(self, slide: SlideInput) -> list[Frame]:
        return contour_frames(slide.boxes, slide.dimensions, self.max_side)

    def masks(self, slide: SlideInput, frames: list[Frame]) -> list[SegmentMask]:
        raise NotImplementedError

    def segment(self, slide: SlideInput) -> tuple[Segments, list[SegmentMask]]:
        """Memberships of the slide's tiles and the masks they came from (for the QC overlay)."""
        if self.needs_pixels and slide.reader is None:
            raise ValueError(f"{slide.slide_id}: segmenter {self.id!r} needs the slide's pixels")
        masks = self.masks(slide, self.frames(slide))
        return masks_to_segments(slide.coords, slide.tile_level0_px, masks), masks


S = TypeVar("S", bound=type[Segmenter])
#: kind -> class; filled by the segmenter modules, which :mod:`slidemil.segmenters.registry` imports
REGISTRY: dict[str, type[Segmenter]] = {}


def register_segmenter(kind: str) -> Callable[[S], S]:
    def decorate(cls: S) -> S:
        if kind in REGISTRY and REGISTRY[kind] is not cls:
            raise ValueError(f"segmenter {kind!r} already registered")
        REGISTRY[kind] = cls
        cls.kind = kind
        return cls

    return decorate
