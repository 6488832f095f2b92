"""Tile-grid planning at a physical resolution: the ``tiles`` set and the multi-scale ``parents`` set.

Tiles are laid on a global level-0 grid anchored at (0, 0) with the physical stride; a tile is kept when its
tissue coverage is >= ``min_tissue``. Only the low-resolution tissue mask is touched here; no pixels of the
slide are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slidemil.slides.errors import NoTissueError
from slidemil.slides.geometry import TileGeometry
from slidemil.slides.reader import SlideReader
from slidemil.slides.tile_set import PARENTS, TILES, TileSetLayer
from slidemil.slides.tissue import TissueParams, TissueSegmentation, segment_tissue


@dataclass(frozen=True)
class TilingParams:
    """Where tiles come from. ``stride_px`` is in target pixels (None = tile_px, i.e. no overlap)."""

    tile_px: int = 224
    target_mpp: float = 0.5
    stride_px: int | None = None
    min_tissue: float = 0.5
    #: multi-scale parents are ``multiscale_factor`` x coarser (s x s children each); 0 disables
    multiscale_factor: int = 4

    def __post_init__(self) -> None:
        if self.tile_px < 16:
            raise ValueError(f"tile_px must be >= 16, got {self.tile_px}")
        if self.target_mpp <= 0:
            raise ValueError(f"target_mpp must be > 0, got {self.target_mpp}")
        if self.stride_px is not None and self.stride_px <= 0:
            raise ValueError(f"stride_px must be > 0, got {self.stride_px}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"min_tissue must be in [0, 1], got {self.min_tissue}")
        if self.multiscale_factor not in (0, 2, 3, 4, 5, 6, 7, 8):
            raise ValueError(f"multiscale_factor must be 0 (off) or 2..8, got {self.multiscale_factor}")

    @classmethod
    def from_dict(cls, d: dict) -> TilingParams:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown tiling parameter(s): {sorted(unknown)}")
        return cls(**d)


def grid_positions(width: int, height: int, size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left level-0 coordinates of every full tile of ``size`` on a ``stride`` grid (row-major)."""
    xs = np.arange(0, max(width - size, -1) + 1, stride, dtype=np.int64)
    ys = np.arange(0, max(height - size, -1) + 1, stride, dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)
    return gx.ravel(), gy.ravel()


def slide_attrs(reader: SlideReader, segmentation: TissueSegmentation) -> dict:
    """Slide-level facts stored at the root of the tile file (the same for every tile set)."""
    width, height = reader.dimensions
    return {
        "width": width,
        "height": height,
        "backend": reader.backend,
        "mpp_source": reader.mpp_source,
        "objective_power": reader.objective_power or 0.0,
        "tissue_fraction": float(segmentation.tissue_fraction),
    }


def plan_tiles(reader: SlideReader, segmentation: TissueSegmentation, params: TilingParams) -> TileSetLayer:
    """The ``tiles`` set of one slide: ``tile_px`` tiles at ``target_mpp`` with >= ``min_tissue`` tissue."""
    geometry = reader.tile_geometry(params.tile_px, params.target_mpp, params.stride_px)
    return _grid_set(TILES, reader, segmentation, geometry, params.min_tissue, {})


def plan_parents(
    reader: SlideReader, segmentation: TissueSegmentation, params: TilingParams, tiles: TileSetLayer
) -> TileSetLayer | None:
    """The ``parents`` set: ``tile_px`` tiles ``s`` x coarser, each covering s x s children of ``tiles``.

    None when multi-scale is off, or with overlapping tiles (children would not tile a parent). Parents keep
    the tissue rule on their own footprint; ``children[p, j * s + i]`` is the index in ``tiles`` of the child
    at level-0 ``(X + i * c, Y + j * c)`` (``c`` the child footprint), or -1 where that child was dropped.
    Everything is in level-0 pixels, so the relation never depends on which pyramid levels a scanner wrote.
    """
    s = params.multiscale_factor
    if not s or params.stride_px not in (None, params.tile_px):
        return None
    geometry = tiles.geometry.coarser(s, reader.level_downsamples)
    parents = _grid_set(PARENTS, reader, segmentation, geometry, params.min_tissue,
                        {"scale_factor": s, "children_of": TILES})
    c = tiles.geometry.level0_px
    lookup = {(int(x), int(y)): i for i, (x, y) in enumerate(tiles.coords)}
    children = np.full((len(parents), s * s), -1, dtype=np.int64)
    for p, (X, Y) in enumerate(parents.coords):
        for j in range(s):
            for i in range(s):
                children[p, j * s + i] = lookup.get((int(X) + i * c, int(Y) + j * c), -1)
    parents.children = children
    return parents


def plan_tile_sets(reader: SlideReader, segmentation: TissueSegmentation, params: TilingParams) -> list[TileSetLayer]:
    """Every tile set the tile stage stores for a slide: ``tiles``, then ``parents`` when multi-scale is on."""
    tiles = plan_tiles(reader, segmentation, params)
    parents = plan_parents(reader, segmentation, params, tiles)
    return [tiles] if parents is None else [tiles, parents]


def tile_slide(
    reader: SlideReader, params: TilingParams, tissue: TissueParams
) -> tuple[TissueSegmentation, list[TileSetLayer]]:
    """Segment the tissue and plan every tile set of one slide: what the tile stage stores and what serving
    computes in memory, so both see identical tiles. Raises :class:`NoTissueError` naming the slide when there
    is no tissue or no tile reaches ``min_tissue``."""
    seg = segment_tissue(reader, tissue)
    if not seg.contours:
        raise NoTissueError(reader.slide_id, "tissue segmentation found no tissue (check the QC image; lower "
                            "tissue.sat_threshold for this slide in the overrides CSV)")
    tile_sets = plan_tile_sets(reader, seg, params)
    if len(tile_sets[0]) == 0:
        raise NoTissueError(reader.slide_id, f"no tile reaches min_tissue={params.min_tissue}")
    return seg, tile_sets


def _grid_set(
    name: str,
    reader: SlideReader,
    segmentation: TissueSegmentation,
    geometry: TileGeometry,
    min_tissue: float,
    attrs: dict,
) -> TileSetLayer:
    width, height = reader.dimensions
    xs, ys = grid_positions(width, height, geometry.level0_px, geometry.level0_stride)
    coverage = segmentation.coverage(xs, ys, geometry.level0_px) if xs.size else np.zeros(0)
    keep = coverage >= min_tissue
    coords = np.stack([xs[keep], ys[keep]], axis=1) if keep.any() else np.zeros((0, 2), np.int64)
    return TileSetLayer(
        name=name,
        slide_id=reader.slide_id,
        slide_path=str(reader.path),
        coords=coords.astype(np.int64),
        geometry=geometry,
        tissue_coverage=coverage[keep].astype(np.float32),
        attrs={"min_tissue": min_tissue, **attrs},
    )
