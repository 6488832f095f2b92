"""The feature store: ``data/features/<encoder>/<slide_id>.h5``, one file per slide and encoder.

Layout (the contract between feature extraction and the MIL models):

- ``features``: float32 (N, d), row i is the encoding of tile i of the slide's tile file.
- ``coords``: int64 (N, 2), the tile file's level-0 ``(x, y)``, in the same order.
- attributes: ``encoder, weights_id, weights_source, feature_dim, input_px, mean, std, interpolation``;
  the tile geometry (``tile_px, target_mpp, slide_mpp, read_level, ...``) copied from the tile file;
  ``slide_id, slide_path, tile_config_hash, tiles_digest, n_tiles, empty, format_version`` and
  ``complete=True`` (written last, so a file without it is never taken for a finished one).

Writes go through :func:`feature_writer`, which streams batches into a temporary file and renames it only
once everything, ``complete`` included, is written.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from slidemil.utils.atomic import atomic_path

FORMAT_VERSION = 1


def feature_dir(root: str | Path, encoder_name: str) -> Path:
    """``root/<encoder>``, with characters unsafe in folder names (``timm:vit/b`` -> ``timm-vit-b``) replaced."""
    return Path(root) / re.sub(r"[^A-Za-z0-9._-]+", "-", encoder_name).strip("-")


@contextlib.contextmanager
def feature_writer(
    path: str | Path, coords: np.ndarray, feature_dim: int, attrs: Mapping[str, Any]
) -> Iterator[h5py.Dataset]:
    """Yield the (N, d) float32 ``features`` dataset of a new file; on success mark it complete and publish.

    If the block raises, nothing appears at ``path`` (a previous file there stays untouched).
    """
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("coords", data=coords)
            ds = f.create_dataset("features", shape=(coords.shape[0], int(feature_dim)), dtype=np.float32)
            for k, v in attrs.items():
                f.attrs[k] = "" if v is None else v
            f.attrs["n_tiles"] = coords.shape[0]
            f.attrs["feature_dim"] = int(feature_dim)
            f.attrs["format_version"] = FORMAT_VERSION
            yield ds
            f.attrs["complete"] = True


def write_features(
    path: str | Path, features: np.ndarray, coords: np.ndarray, attrs: Mapping[str, Any]
) -> None:
    """Write a whole feature matrix at once (for encoders that do not stream)."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] != len(coords):
        raise ValueError(
            f"features must be (N, d) with N = len(coords) = {len(coords)}, got {features.shape}"
        )
    with feature_writer(path, coords, features.shape[1], attrs) as ds:
        ds[...] = features


def read_feature_attrs(path: str | Path) -> dict[str, Any]:
    """Attributes only (cheap: no arrays are read)."""
    with h5py.File(path, "r") as f:
        return {k: _py(v) for k, v in f.attrs.items()}


def read_features(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(features float32 (N, d), coords int64 (N, 2), attrs)``; refuses an unfinished file."""
    with h5py.File(path, "r") as f:
        attrs = {k: _py(v) for k, v in f.attrs.items()}
        if not attrs.get("complete", False):
            raise ValueError(f"{path}: feature file is incomplete (interrupted write?)")
        return f["features"][:], f["coords"][:], attrs


def is_complete(path: str | Path, **expected: Any) -> bool:
    """True when ``path`` is a finished feature file whose attributes equal every ``expected`` value."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        attrs = read_feature_attrs(path)
    except OSError:  # truncated or not HDF5
        return False
    return bool(attrs.get("complete", False)) and all(attrs.get(k) == v for k, v in expected.items())


def list_feature_files(folder: str | Path, *, include_incomplete: bool = False) -> dict[str, Path]:
    """``{slide_id: path}`` of the feature files in ``folder`` (temp files and unfinished files left out)."""
    out: dict[str, Path] = {}
    folder = Path(folder)
    if not folder.is_dir():
        return out
    for p in sorted(folder.glob("*.h5")):
        if p.name.startswith("."):
            continue
        try:
            attrs = read_feature_attrs(p)
        except OSError:
            continue
        if include_incomplete or attrs.get("complete", False):
            out[str(attrs.get("slide_id") or p.stem)] = p
    return out


def _py(value: Any) -> Any:
    """h5py attribute -> plain Python (bytes -> str, numpy scalars -> Python, arrays -> lists)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
