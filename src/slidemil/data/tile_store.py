"""The tile store: ``data/tiles/<slide_id>.h5``, one file per slide.

Layout (the contract between the ``tile`` stage and everything after it):

- ``coords``: int64 (N, 2), level-0 top-left ``(x, y)`` of every kept tile.
- ``tissue_coverage``: float32 (N,), fraction of each tile inside the tissue mask.
- attributes: every :class:`~slidemil.slides.geometry.TileGeometry` field (``tile_px, target_mpp, slide_mpp,
  read_level, read_downsample, read_px, level0_px, level0_stride``), plus ``slide_id, slide_path, width,
  height, backend, mpp_source, config_hash, n_tiles, tissue_fraction, format_version`` and ``complete=True``
  (written last, so a file without it is never mistaken for a finished one).
- optional group ``multiscale``: ``parent_coords`` int64 (P, 2) at the coarse scale, ``children`` int64
  (P, s*s) indices into ``coords`` in row-major order within the parent (-1 where that child was not kept),
  attributes ``scale_factor``, ``parent_target_mpp``, ``parent_level0_px``.

To re-read tile i exactly: ``open_slide(attrs['slide_path'], mpp=attrs['slide_mpp'])`` then
``reader.read_tile(coords[i], TileGeometry.from_attrs(attrs))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from slidemil.slides.geometry import TileGeometry
from slidemil.utils.atomic import atomic_path

FORMAT_VERSION = 1


@dataclass
class MultiScaleIndex:
    """Parent tiles at ``scale_factor`` x coarser resolution and their child tile indices."""

    scale_factor: int
    parent_target_mpp: float
    parent_level0_px: int
    parent_coords: np.ndarray  # (P, 2) int64
    children: np.ndarray  # (P, s*s) int64, -1 = child not kept


@dataclass
class TileSet:
    """Everything stored for one slide's tiles."""

    slide_id: str
    slide_path: str
    coords: np.ndarray
    geometry: TileGeometry
    tissue_coverage: np.ndarray
    attrs: dict = field(default_factory=dict)
    multiscale: MultiScaleIndex | None = None

    def __len__(self) -> int:
        return int(self.coords.shape[0])


def write_tiles(path: str | Path, tiles: TileSet) -> None:
    """Write atomically; ``complete`` is set last."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("coords", data=np.asarray(tiles.coords, dtype=np.int64).reshape(-1, 2))
            f.create_dataset("tissue_coverage", data=np.asarray(tiles.tissue_coverage, dtype=np.float32))
            for k, v in tiles.geometry.as_attrs().items():
                f.attrs[k] = v
            for k, v in tiles.attrs.items():
                f.attrs[k] = "" if v is None else v
            f.attrs["slide_id"] = tiles.slide_id
            f.attrs["slide_path"] = str(tiles.slide_path)
            f.attrs["n_tiles"] = len(tiles)
            f.attrs["format_version"] = FORMAT_VERSION
            if tiles.multiscale is not None:
                ms = tiles.multiscale
                g = f.create_group("multiscale")
                g.create_dataset("parent_coords", data=np.asarray(ms.parent_coords, np.int64).reshape(-1, 2))
                g.create_dataset("children", data=np.asarray(ms.children, np.int64))
                g.attrs["scale_factor"] = ms.scale_factor
                g.attrs["parent_target_mpp"] = ms.parent_target_mpp
                g.attrs["parent_level0_px"] = ms.parent_level0_px
            f.attrs["complete"] = True


def read_tiles(path: str | Path) -> TileSet:
    with h5py.File(path, "r") as f:
        if not f.attrs.get("complete", False):
            raise ValueError(f"{path}: tile file is incomplete (interrupted write?)")
        attrs = {k: _py(v) for k, v in f.attrs.items()}
        ms = None
        if "multiscale" in f:
            g = f["multiscale"]
            ms = MultiScaleIndex(
                scale_factor=int(g.attrs["scale_factor"]),
                parent_target_mpp=float(g.attrs["parent_target_mpp"]),
                parent_level0_px=int(g.attrs["parent_level0_px"]),
                parent_coords=g["parent_coords"][:],
                children=g["children"][:],
            )
        return TileSet(
            slide_id=str(attrs["slide_id"]),
            slide_path=str(attrs["slide_path"]),
            coords=f["coords"][:],
            geometry=TileGeometry.from_attrs(attrs),
            tissue_coverage=f["tissue_coverage"][:],
            attrs=attrs,
            multiscale=ms,
        )


def is_complete(path: str | Path, config_hash: str | None = None) -> bool:
    """True when ``path`` is a finished tile file (and, if given, made with the same config)."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                return False
            return config_hash is None or _py(f.attrs.get("config_hash")) == config_hash
    except OSError:
        return False


def _py(value):
    """h5py attribute -> plain Python (bytes -> str, numpy scalars -> Python)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value
