"""What a segmenter produces for one slide: tile -> segment memberships, and the one function that derives them
from masks (methods.md section D, "Preprocessing").

A segment is a binary mask in a :class:`Frame`, a level-0 rectangle rendered at ``1 / downsample``. A tile is
in a segment when its footprint, scaled by ``1 / downsample`` into that frame, overlaps the mask; a tile may be
in several. Its *relative area* is the pixel area of the smallest segment that contains it. Tiles in no
segment form one sentinel "unsegmented" group, so every tile has a group and an area.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: name of the sentinel group of tiles that no segment covers
UNSEGMENTED = "unsegmented"


@dataclass(frozen=True)
class Frame:
    """A level-0 rectangle at ``(x0, y0)`` rendered as ``width x height`` pixels, one per ``downsample``^2
    level-0 pixels (one frame per tissue contour)."""

    x0: int
    y0: int
    width: int
    height: int
    downsample: float

    def footprint(self, coords: np.ndarray, side_level0: float) -> np.ndarray:
        """(N, 4) int64 ``col0, row0, col1, row1`` (exclusive ends) of each tile's footprint in this frame,
        clipped to it; an empty range (col1 <= col0) means the tile lies outside the frame."""
        d = float(self.downsample)
        x = (coords[:, 0].astype(np.float64) - self.x0) / d
        y = (coords[:, 1].astype(np.float64) - self.y0) / d
        s = side_level0 / d
        c0 = np.clip(np.floor(x), 0, self.width).astype(np.int64)
        r0 = np.clip(np.floor(y), 0, self.height).astype(np.int64)
        c1 = np.clip(np.ceil(x + s), 0, self.width).astype(np.int64)
        r1 = np.clip(np.ceil(y + s), 0, self.height).astype(np.int64)
        return np.stack([c0, r0, c1, r1], axis=1)


def frame_downsample(width_level0: float, height_level0: float, max_side: int = 1024) -> float:
    """d = 2^ceil(log2(max(w, h) / max_side)), never below 1: the power of two that brings the long side of a
    contour's bounding box to at most ``max_side`` pixels (never upsampled)."""
    long_side = max(float(width_level0), float(height_level0), 1.0)
    return float(2 ** max(0, math.ceil(math.log2(long_side / max_side))))


@dataclass(frozen=True)
class SegmentMask:
    """One segment: a boolean mask of its frame's shape. ``area`` is its pixel count in the frame."""

    frame: Frame
    mask: np.ndarray  # (height, width) bool

    def __post_init__(self) -> None:
        if self.mask.shape != (self.frame.height, self.frame.width):
            raise ValueError(f"segment mask of shape {self.mask.shape} in a frame of "
                             f"{self.frame.height} x {self.frame.width}")

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass
class Segments:
    """Tile -> group memberships of one slide.

    Attributes:
        n_tiles: tiles of the tile set the memberships refer to.
        pairs: (M, 2) int64 ``(tile, group)`` pairs, sorted, unique; every tile appears at least once.
        group_area: (G,) float64 pixel area of each group (segments first, then the sentinel if any).
        relative_area: (N,) float64 area of the smallest group containing each tile.
        unsegmented: index of the sentinel "unsegmented" group, -1 when every tile is in a segment.
    """

    n_tiles: int
    pairs: np.ndarray
    group_area: np.ndarray
    relative_area: np.ndarray
    unsegmented: int = -1

    def __post_init__(self) -> None:
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        self.group_area = np.asarray(self.group_area, dtype=np.float64)
        self.relative_area = np.asarray(self.relative_area, dtype=np.float64)
        g = len(self.group_area)
        if self.relative_area.shape != (self.n_tiles,):
            raise ValueError(f"relative_area has shape {self.relative_area.shape}, expected ({self.n_tiles},)")
        if self.pairs.size and (self.pairs[:, 0].min() < 0 or self.pairs[:, 0].max() >= self.n_tiles
                                or self.pairs[:, 1].min() < 0 or self.pairs[:, 1].max() >= g):
            raise ValueError(f"membership pairs outside {self.n_tiles} tiles x {g} groups")
        if self.n_tiles and np.unique(self.pairs[:, 0]).size != self.n_tiles:
            raise ValueError("every tile must belong to a group (the sentinel group holds the others)")
        if not -1 <= self.unsegmented < max(g, 0) or (self.unsegmented == -1 and g == 0 and self.n_tiles):
            raise ValueError(f"unsegmented group {self.unsegmented} outside {g} groups")

    @property
    def n_groups(self) -> int:
        return int(len(self.group_area))

    @property
    def n_segments(self) -> int:
        """Groups that are real segments (the sentinel excluded)."""
        return self.n_groups - (self.unsegmented >= 0)

    def dense(self) -> np.ndarray:
        """(N, G) bool membership matrix."""
        out = np.zeros((self.n_tiles, self.n_groups), dtype=bool)
        out[self.pairs[:, 0], self.pairs[:, 1]] = True
        return out

    def smallest_group(self) -> np.ndarray:
        """(N,) the group whose area is each tile's relative area (the sentinel for unsegmented tiles)."""
        order = np.lexsort((self.group_area[self.pairs[:, 1]], self.pairs[:, 0]))
        first = np.unique(self.pairs[order, 0], return_index=True)[1]
        return self.pairs[order[first], 1]


def from_groups(n_tiles: int, members: Sequence[np.ndarray], areas: Sequence[float],
                unsegmented_area_per_tile: np.ndarray | float) -> Segments:
    """Segments from each segment's member tiles and area; tiles in none go to the sentinel group, whose area
    is the sum of its tiles' footprint areas in the same pixel units (``unsegmented_area_per_tile``)."""
    kept = [(np.unique(np.asarray(m, dtype=np.int64)), float(a)) for m, a in zip(members, areas, strict=True)]
    kept = [(m, a) for m, a in kept if m.size]
    pairs = [np.stack([m, np.full(m.size, g)], axis=1) for g, (m, _) in enumerate(kept)]
    group_area = [a for _, a in kept]
    covered = np.zeros(n_tiles, dtype=bool)
    for m, _ in kept:
        covered[m] = True
    unsegmented = -1
    if not covered.all():
        rest = np.flatnonzero(~covered)
        unsegmented = len(kept)
        pairs.append(np.stack([rest, np.full(rest.size, unsegmented)], axis=1))
        per_tile = np.broadcast_to(np.asarray(unsegmented_area_per_tile, dtype=np.float64), (n_tiles,))
        group_area.append(float(per_tile[rest].sum()))
    pairs_arr = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    pairs_arr = np.unique(pairs_arr, axis=0)
    area = np.asarray(group_area, dtype=np.float64)
    relative = np.full(n_tiles, np.inf)
    if pairs_arr.size:
        np.minimum.at(relative, pairs_arr[:, 0], area[pairs_arr[:, 1]])
    return Segments(n_tiles, pairs_arr, area, np.where(np.isfinite(relative), relative, 0.0), unsegmented)


def masks_to_segments(coords: np.ndarray, side_level0: float, masks: Sequence[SegmentMask]) -> Segments:
    """The shared mapping: a tile is in a segment when its footprint (scaled by 1/d into the segment's frame)
    overlaps the mask. Overlap per tile is one lookup in the mask's summed-area table, so a mask costs
    O(frame pixels + tiles) whatever the tile count."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    n = coords.shape[0]
    members, areas = [], []
    boxes: dict[Frame, np.ndarray] = {}
    for seg in masks:
        box = boxes.get(seg.frame)
        if box is None:
            box = boxes[seg.frame] = seg.frame.footprint(coords, side_level0)
        inside = np.flatnonzero((box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1]))
        sat = np.zeros((seg.frame.height + 1, seg.frame.width + 1), dtype=np.int64)
        sat[1:, 1:] = np.cumsum(np.cumsum(seg.mask, axis=0, dtype=np.int64), axis=1)
        c0, r0, c1, r1 = box[inside].T
        hits = sat[r1, c1] - sat[r0, c1] - sat[r1, c0] + sat[r0, c0]
        members.append(inside[hits > 0])
        areas.append(seg.area)
    return from_groups(n, members, areas, _footprint_area(coords, side_level0, list(boxes)))


def _footprint_area(coords: np.ndarray, side_level0: float, frames: Sequence[Frame]) -> np.ndarray:
    """Each tile's footprint area in the pixels of the first frame holding its centre (the coarsest frame's
    pixels for a tile in none), so the sentinel group's area is in the same units as the segments'."""
    if not frames:
        return np.full(coords.shape[0], float(side_level0) ** 2)
    coarsest = max(f.downsample for f in frames)
    d = np.full(coords.shape[0], coarsest)
    cx, cy = coords[:, 0] + side_level0 / 2, coords[:, 1] + side_level0 / 2
    assigned = np.zeros(coords.shape[0], dtype=bool)
    for f in frames:
        inside = ~assigned & (cx >= f.x0) & (cy >= f.y0) & (cx < f.x0 + f.width * f.downsample) \
            & (cy < f.y0 + f.height * f.downsample)
        d[inside] = f.downsample
        assigned |= inside
    return (side_level0 / d) ** 2
