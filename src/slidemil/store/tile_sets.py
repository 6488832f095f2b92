"""Tile sets: ``data/tiles/<slide_id>.h5``, one layer of kind ``tiles`` per slide holding named tile sets.

Layout (the contract between the ``tile`` stage and everything after it):

- root attributes: ``slide_id, slide_path, tile_sets`` (names, in order) and the slide-level facts the tile
  stage records (``width, height, backend, mpp_source, objective_power, tissue_fraction``), plus the store's
  ``kind="tiles", format_version, resume_key, complete``.
- one group per tile set (``tiles`` at the target mpp; ``parents`` s x coarser when multi-scale is on):
  ``coords`` int64 (N, 2) level-0 top-left ``(x, y)``, ``tissue_coverage`` float32 (N,), for parents
  ``children`` int64 (P, s*s) row-major indices into the ``tiles`` set (-1 = that child was dropped); its
  attributes are every :class:`~slidemil.slides.geometry.TileGeometry` field plus ``n_tiles`` and the set's
  own facts (``min_tissue``; ``scale_factor`` and ``children_of`` for parents).

Any tile of any set is re-read exactly with ``open_slide(slide_path, mpp=geometry.slide_mpp)`` then
``reader.read_tile(coords[i], geometry)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slidemil.slides.geometry import TileGeometry
from slidemil.slides.tile_set import TILES, TileSetLayer
from slidemil.store.layers import LayerError, LayerGroup, open_layer, plain_attrs, read_group, write_layer

KIND = "tiles"


def write_tile_sets(
    path: str | Path,
    tile_sets: Sequence[TileSetLayer],
    *,
    attrs: Mapping[str, Any] | None = None,
    resume_key: str = "",
) -> Path:
    """Write a slide's tile sets as one layer (atomic); ``attrs`` are slide-level, each set's own go in its group."""
    if not tile_sets:
        raise ValueError(f"{path}: no tile sets to write")
    names = [t.name for t in tile_sets]
    if len(set(names)) != len(names) or TILES not in names:
        raise ValueError(f"{path}: tile set names must be unique and include {TILES!r}, got {names}")
    n_tiles = len(next(t for t in tile_sets if t.name == TILES))
    first = tile_sets[0]
    groups = {}
    for t in tile_sets:
        _check_set(path, t, n_tiles)
        arrays = {
            "coords": np.asarray(t.coords, np.int64).reshape(-1, 2),
            "tissue_coverage": np.asarray(t.tissue_coverage, np.float32).reshape(-1),
        }
        if t.children is not None:
            arrays["children"] = np.asarray(t.children, np.int64)
        groups[t.name] = LayerGroup(arrays, {**t.attrs, **t.geometry.as_attrs(), "n_tiles": len(t)})
    root = {**(attrs or {}), "slide_id": first.slide_id, "slide_path": str(first.slide_path), "tile_sets": names}
    return write_layer(path, KIND, attrs=root, groups=groups, resume_key=resume_key)


def read_tile_set(path: str | Path, name: str = TILES) -> TileSetLayer:
    """One tile set of a checked tile file; ``attrs`` merges the slide's attributes with the set's own."""
    with open_layer(path, KIND) as f:
        if name not in f:
            have = ", ".join(k for k in f if not k.startswith("_")) or "none"
            raise LayerError(path, f"no tile set {name!r} (has: {have}; parents need tiling.multiscale_factor > 0)")
        slide = plain_attrs(f.attrs)
        group = read_group(f[name], path)
    attrs = {**slide, **group.attrs}
    return TileSetLayer(
        name=name,
        slide_id=str(attrs["slide_id"]),
        slide_path=str(attrs["slide_path"]),
        coords=group.arrays["coords"].astype(np.int64).reshape(-1, 2),
        geometry=TileGeometry.from_attrs(group.attrs),
        tissue_coverage=group.arrays["tissue_coverage"].astype(np.float32),
        children=group.arrays.get("children"),
        attrs=attrs,
    )


def tile_set_names(path: str | Path) -> list[str]:
    """Names of the tile sets in a checked tile file, in the order they were written."""
    with open_layer(path, KIND) as f:
        return [str(n) for n in plain_attrs(f.attrs)["tile_sets"]]


def tiles_digest(tile_set: TileSetLayer) -> str:
    """Fingerprint of exactly which pixels a tile set names (coordinates + geometry + slide id).

    Feature layers record it, so features are only ever paired with the tiles they encode. The slide file's
    location is left out (a moved clone keeps its features); its content is in the tile file's resume key.
    """
    h = hashlib.sha256(np.ascontiguousarray(tile_set.coords, dtype=np.int64).tobytes())
    h.update(json.dumps([tile_set.geometry.as_attrs(), tile_set.slide_id, tile_set.name], sort_keys=True).encode())
    return h.hexdigest()[:16]


def _check_set(path: str | Path, t: TileSetLayer, n_tiles: int) -> None:
    n = len(t)
    if np.asarray(t.tissue_coverage).reshape(-1).shape[0] != n:
        raise ValueError(f"{path}: tile set {t.name!r} has {n} coords but {len(t.tissue_coverage)} coverages")
    if t.children is None:
        return
    ch = np.asarray(t.children)
    if ch.ndim != 2 or ch.shape[0] != n:
        raise ValueError(f"{path}: {t.name!r} children must be (P={n}, s*s), got {ch.shape}")
    if ch.size and (ch.min() < -1 or ch.max() >= n_tiles):
        raise ValueError(f"{path}: {t.name!r} children index outside the {n_tiles} tiles (or -1)")
