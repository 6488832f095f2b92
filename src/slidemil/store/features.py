"""Feature layers: ``data/features/<encoder>/<slide_id>.h5``, one file per slide and encoder.

A feature layer is keyed by (encoder id, tile set): the file is the encoder's, and it holds one group per
encoded tile set (``tiles``; ``parents`` too when ``features.tile_sets`` asks for it).

- root attributes: the encoder's identity and preprocessing (``encoder, weights_id, weights_source,
  feature_dim, input_px, mean, std, interpolation``), ``slide_id, slide_path, tile_file,
  tile_config_hash`` (the tile file's resume key), ``tile_sets`` (names), plus the store's ``kind="features",
  format_version, resume_key, complete``.
- group ``<tile set>``: ``features`` float32 (N, d), row i = tile i of that tile set; ``coords`` int64 (N, 2),
  the tile set's coordinates in the same order; attributes ``tiles_digest`` (links the rows to the tile set),
  ``n_tiles``, ``empty`` and the tile set's geometry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from slidemil.slides.tile_set import TILES, TileSetLayer
from slidemil.store.layers import (
    LayerError,
    LayerTooLarge,
    layer_writer,
    open_layer,
    plain_attrs,
    read_group,
    set_attrs,
)
from slidemil.store.tile_sets import tiles_digest

KIND = "features"


@dataclass
class FeatureLayer:
    """Features of one tile set of one slide, from one encoder."""

    slide_id: str
    tile_set: str
    encoder_id: str
    features: np.ndarray  # (N, d) float32, row i = tile i of the tile set
    coords: np.ndarray  # (N, 2) int64
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.features.shape[0])


class FeatureFileWriter:
    """Adds tile-set groups to a feature file being written (see :func:`feature_writer`)."""

    def __init__(self, f: h5py.File):
        self._f = f
        self.tile_sets: list[str] = []

    def tile_set(
        self, name: str, coords: np.ndarray, feature_dim: int, attrs: Mapping[str, Any] | None = None
    ) -> h5py.Dataset:
        """Create group ``name`` with its ``coords`` and return its empty (N, d) float32 ``features`` dataset."""
        dim = self._f.attrs.get("feature_dim")
        if dim is not None and int(dim) != int(feature_dim):
            raise ValueError(f"tile set {name!r}: feature_dim {feature_dim} differs from the file's {int(dim)}")
        coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        g = self._f.create_group(name)
        g.create_dataset("coords", data=coords)
        set_attrs(g, {**(attrs or {}), "n_tiles": coords.shape[0], "empty": coords.shape[0] == 0})
        self._f.attrs["feature_dim"] = int(feature_dim)
        self.tile_sets.append(name)
        return g.create_dataset("features", shape=(coords.shape[0], int(feature_dim)), dtype=np.float32)


@contextlib.contextmanager
def feature_writer(
    path: str | Path, attrs: Mapping[str, Any], *, resume_key: str = ""
) -> Iterator[FeatureFileWriter]:
    """Stream features into a new feature file; it is published (complete, finite) only if the block succeeds."""
    with layer_writer(path, KIND, attrs, resume_key=resume_key) as f:
        w = FeatureFileWriter(f)
        yield w
        if not w.tile_sets:
            raise ValueError(f"{path}: a feature file needs at least one tile set")
        f.attrs["tile_sets"] = w.tile_sets


def write_features(
    path: str | Path,
    features: np.ndarray,
    coords: np.ndarray,
    attrs: Mapping[str, Any],
    *,
    tile_set: str = TILES,
    group_attrs: Mapping[str, Any] | None = None,
    resume_key: str = "",
) -> Path:
    """Write one tile set's whole feature matrix at once (for callers that do not stream)."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] != len(coords):
        raise ValueError(f"features must be (N, d) with N = len(coords) = {len(coords)}, got {features.shape}")
    with feature_writer(path, attrs, resume_key=resume_key) as w:
        w.tile_set(tile_set, coords, features.shape[1], group_attrs)[...] = features
    return Path(path)


def read_feature_layer(
    path: str | Path,
    tile_set: str = TILES,
    *,
    tiles: TileSetLayer | None = None,
    max_rows: int | None = None,
) -> FeatureLayer:
    """The checked features of ``tile_set``; with ``tiles``, also checked to be the encoding of those tiles.

    Refuses (``LayerError``, a ``ValueError`` naming the file) incomplete or foreign files, a wrong format,
    NaN/inf, shapes that do not fit, more than ``max_rows`` rows (checked before anything is loaded) and,
    given ``tiles``, rows whose coordinates or tiles digest differ from that tile set.
    """
    with open_layer(path, KIND) as f:
        if tile_set not in f or not isinstance(f[tile_set], h5py.Group):
            have = ", ".join(k for k in f if isinstance(f[k], h5py.Group)) or "none"
            raise LayerError(path, f"no features for tile set {tile_set!r} (has: {have}; see features.tile_sets)")
        g = f[tile_set]
        for key in ("features", "coords"):
            if key not in g:
                raise LayerError(path, f"tile set {tile_set!r} has no `{key}` dataset")
        fd, cd = g["features"], g["coords"]
        if fd.ndim != 2 or fd.dtype.kind not in "fiu":
            raise LayerError(path, f"`features` must be numeric (N, d), got {fd.dtype} {fd.shape}")
        n = fd.shape[0]
        if cd.shape != (n, 2) or cd.dtype.kind not in "iu":
            raise LayerError(path, f"`coords` must be integer (N, 2) = ({n}, 2), got {cd.dtype} {cd.shape}")
        if max_rows is not None and n > max_rows:
            raise LayerTooLarge(path, f"{n} tiles exceed the limit of {max_rows}")
        group = read_group(g, path)
        root = plain_attrs(f.attrs)
    layer = FeatureLayer(
        slide_id=str(root.get("slide_id", "")),
        tile_set=tile_set,
        encoder_id=str(root.get("encoder", "")),
        features=np.asarray(group.arrays["features"], dtype=np.float32),
        coords=np.asarray(group.arrays["coords"], dtype=np.int64),
        attrs={**root, **group.attrs},
    )
    if tiles is not None:
        check_link(path, layer, tiles)
    return layer


def check_link(path: str | Path, layer: FeatureLayer, tiles: TileSetLayer) -> None:
    """Raise unless ``layer``'s rows are, in order, the tiles of ``tiles`` (same set, coordinates, digest)."""
    where = f"tile set {tiles.name!r} of slide {tiles.slide_id!r}"
    if layer.tile_set != tiles.name:
        raise LayerError(path, f"features of tile set {layer.tile_set!r} cannot link to {where}")
    if len(layer) != len(tiles) or not np.array_equal(layer.coords, tiles.coords):
        raise LayerError(
            path,
            f"features do not link to {where}: {len(layer)} rows vs {len(tiles)} tiles or different coordinates "
            "(the tiles were re-made after the features; re-run the features stage)",
        )
    digest = tiles_digest(tiles)
    if layer.attrs.get("tiles_digest") != digest:
        raise LayerError(
            path,
            f"features do not link to {where}: tiles digest {layer.attrs.get('tiles_digest')!r} != {digest!r} "
            "(same coordinates, other geometry or slide; re-run the features stage)",
        )


def read_feature_attrs(path: str | Path) -> dict[str, Any]:
    """Root attributes of a checked feature file (cheap: no arrays are read)."""
    with open_layer(path, KIND) as f:
        return plain_attrs(f.attrs)
