"""Tile-grid planning at a physical resolution, and the multi-scale parent -> children index.

Tiles are laid on a global level-0 grid anchored at (0, 0) with the physical stride; a tile is kept when its
tissue coverage is >= ``min_tissue``. Only the low-resolution tissue mask is touched here; no pixels of the
slide are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slidemil.data.tile_store import MultiScaleIndex, TileSet
from slidemil.slides.geometry import TileGeometry
from slidemil.slides.reader import SlideReader
from slidemil.slides.tissue import TissueSegmentation


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


def plan_tiles(
    reader: SlideReader,
    segmentation: TissueSegmentation,
    params: TilingParams,
    *,
    extra_attrs: dict | None = None,
) -> TileSet:
    """Choose the tiles of one slide (coordinates + geometry + optional multi-scale index)."""
    geometry = reader.tile_geometry(params.tile_px, params.target_mpp, params.stride_px)
    width, height = reader.dimensions
    xs, ys = grid_positions(width, height, geometry.level0_px, geometry.level0_stride)
    coverage = segmentation.coverage(xs, ys, geometry.level0_px) if xs.size else np.zeros(0)
    keep = coverage >= params.min_tissue
    coords = np.stack([xs[keep], ys[keep]], axis=1) if keep.any() else np.zeros((0, 2), np.int64)
    multiscale = None
    if params.multiscale_factor and (params.stride_px in (None, params.tile_px)):
        multiscale = _multiscale_index(coords, segmentation, geometry, params, width, height)
    attrs = {
        "width": width,
        "height": height,
        "backend": reader.backend,
        "mpp_source": reader.mpp_source,
        "objective_power": reader.objective_power or 0.0,
        "min_tissue": params.min_tissue,
        "tissue_fraction": float(segmentation.tissue_fraction),
    }
    attrs.update(extra_attrs or {})
    return TileSet(
        slide_id=reader.slide_id,
        slide_path=str(reader.path),
        coords=coords.astype(np.int64),
        geometry=geometry,
        tissue_coverage=coverage[keep].astype(np.float32),
        attrs=attrs,
        multiscale=multiscale,
    )


def _multiscale_index(
    coords: np.ndarray,
    segmentation: TissueSegmentation,
    geometry: TileGeometry,
    params: TilingParams,
    width: int,
    height: int,
) -> MultiScaleIndex:
    """Parents cover s x s children of the same pixel size at s x coarser mpp, computed in physical units.

    Parent p at level-0 (X, Y) has child (i, j) at (X + i * c, Y + j * c) with c the child footprint, so the
    mapping never depends on which pyramid levels a scanner happened to write.
    """
    s = params.multiscale_factor
    child = geometry.level0_px
    parent = s * child
    pxs, pys = grid_positions(width, height, parent, parent)
    cov = segmentation.coverage(pxs, pys, parent) if pxs.size else np.zeros(0)
    keep = cov >= params.min_tissue
    pxs, pys = pxs[keep], pys[keep]
    lookup = {(int(x), int(y)): i for i, (x, y) in enumerate(coords)}
    children = np.full((pxs.size, s * s), -1, dtype=np.int64)
    for p, (X, Y) in enumerate(zip(pxs, pys, strict=True)):
        for j in range(s):
            for i in range(s):
                children[p, j * s + i] = lookup.get((int(X + i * child), int(Y + j * child)), -1)
    return MultiScaleIndex(
        scale_factor=s,
        parent_target_mpp=params.target_mpp * s,
        parent_level0_px=parent,
        parent_coords=np.stack([pxs, pys], axis=1) if pxs.size else np.zeros((0, 2), np.int64),
        children=children,
    )
