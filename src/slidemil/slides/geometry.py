"""Physical-resolution geometry: which pyramid level to read and how large a region to request.

A tile is always *requested* in physical units (``tile_px`` pixels at ``target_mpp`` um/px). The reader
picks the finest pyramid level that is not finer than needed (reading finer wastes I/O), reads a
proportionally larger or smaller region there and resizes it to ``tile_px``. The result is recorded as a
:class:`TileGeometry`, stored with the tile coordinates so anyone can re-read a tile exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

# Levels whose mpp is within this relative tolerance of the target count as "exact" (scanners report
# e.g. 0.2527 um/px for "40x"; a 2% slack avoids reading level 0 when level 1 is 0.5054 for 0.5 target).
MPP_TOLERANCE = 0.02


def best_level_for_downsample(level_downsamples: Sequence[float], downsample: float) -> int:
    """Index of the coarsest level whose downsample does not exceed ``downsample`` (with tolerance)."""
    best = 0
    for i, ds in enumerate(level_downsamples):
        if ds <= downsample * (1 + MPP_TOLERANCE):
            if ds >= level_downsamples[best]:
                best = i
    return best


@dataclass(frozen=True)
class TileGeometry:
    """How a ``tile_px`` tile at ``target_mpp`` is read from one slide.

    ``level0_px`` is the tile's footprint in level-0 pixels; ``read_px`` the side of the region read at
    ``read_level`` before it is resized to ``tile_px``.
    """

    tile_px: int
    target_mpp: float
    slide_mpp: float
    read_level: int
    read_downsample: float
    read_px: int
    level0_px: int
    level0_stride: int

    @classmethod
    def plan(
        cls,
        *,
        tile_px: int,
        target_mpp: float,
        slide_mpp: float,
        level_downsamples: Sequence[float],
        stride_px: int | None = None,
    ) -> TileGeometry:
        """Plan reads of ``tile_px`` tiles at ``target_mpp`` (stride in target pixels, default = tile_px)."""
        if tile_px <= 0 or target_mpp <= 0 or slide_mpp <= 0:
            raise ValueError(
                f"tile_px, target_mpp and slide_mpp must be positive, got {tile_px}, {target_mpp}, {slide_mpp}"
            )
        stride_px = tile_px if stride_px is None else stride_px
        scale = target_mpp / slide_mpp  # level-0 pixels per target pixel
        level = best_level_for_downsample(level_downsamples, scale)
        ds = float(level_downsamples[level])
        level0_px = max(1, round(tile_px * scale))
        read_px = max(1, round(level0_px / ds))
        return cls(
            tile_px=tile_px,
            target_mpp=float(target_mpp),
            slide_mpp=float(slide_mpp),
            read_level=level,
            read_downsample=ds,
            read_px=read_px,
            level0_px=level0_px,
            level0_stride=max(1, round(stride_px * scale)),
        )

    def coarser(self, factor: int, level_downsamples: Sequence[float]) -> TileGeometry:
        """Geometry of ``tile_px`` tiles ``factor`` x coarser that cover exactly ``factor`` x ``factor`` of these.

        Planned like any tile geometry at ``factor * target_mpp`` (so the read level is chosen the same way),
        then the footprint is snapped to ``factor * level0_px``: a planned footprint can round to a pixel or two
        more or less, and then parents would drift off the grid of their children. The effective mpp thus is
        exactly ``factor`` x the tiles' effective mpp.
        """
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        planned = TileGeometry.plan(
            tile_px=self.tile_px,
            target_mpp=self.target_mpp * factor,
            slide_mpp=self.slide_mpp,
            level_downsamples=level_downsamples,
        )
        level0_px = factor * self.level0_px
        return replace(
            planned,
            level0_px=level0_px,
            level0_stride=factor * self.level0_stride,
            read_px=max(1, round(level0_px / planned.read_downsample)),
        )

    def as_attrs(self) -> dict[str, float | int]:
        """Flat dict for HDF5 attributes."""
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs) -> TileGeometry:
        return cls(**{k: attrs[k] for k in cls.__dataclass_fields__})
