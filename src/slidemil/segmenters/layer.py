"""The ``segments`` store layer: one HDF5 file per slide (``data/segments/<slide>.h5``) written and read through
:func:`slidemil.store.write_layer` / :func:`slidemil.store.read_layer` (ADR 0008).

Arrays: ``pairs`` (M, 2) int64 sparse ``(tile, group)`` memberships, ``group_area`` (G,), ``relative_area``
(N,). Attributes: the segmenter id, the ``tiles_digest`` of the tile set the rows index (a re-tiled slide
must not be paired with old memberships), the sentinel group. The resume key holds the segmenter's
fingerprint (settings + checkpoint hash), the tile-set digest, the features' own key for segmenters that read
features, and the code version of this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slidemil.segmenters.segments import Segments
from slidemil.store.layers import Layer, LayerError, read_layer, write_layer
from slidemil.utils.hashing import code_version, config_hash

KIND = "segments"
#: modules whose code decides the memberships
SEGMENT_CODE_MODULES = ("slidemil.segmenters", "slidemil.store.layers")


def segments_resume_key(fingerprint: dict[str, Any], tiles_digest: str, features_key: str | None = None) -> str:
    return config_hash({"segmenter": fingerprint, "tiles": tiles_digest, "features": features_key,
                        "code": code_version(SEGMENT_CODE_MODULES)})


def write_segments(path: str | Path, segments: Segments, *, segmenter: str, tiles_digest: str,
                   resume_key: str, tile_set: str = "tiles") -> Path:
    return write_layer(
        path, KIND,
        {"pairs": segments.pairs, "group_area": segments.group_area, "relative_area": segments.relative_area},
        {"segmenter": segmenter, "tiles_digest": tiles_digest, "tile_set": tile_set,
         "n_tiles": int(segments.n_tiles), "unsegmented": int(segments.unsegmented)},
        resume_key=resume_key,
    )


def segments_from_layer(layer: Layer, tiles_digest: str | None = None) -> Segments:
    """The typed view of a read layer; refuses memberships made for another tile set than ``tiles_digest``."""
    if tiles_digest is not None and layer.attrs.get("tiles_digest") != tiles_digest:
        raise LayerError(layer.path, "segments were made for other tiles than the current tile set "
                                     "(re-run the segment stage)")
    try:
        return Segments(int(layer.attrs["n_tiles"]), layer.arrays["pairs"], layer.arrays["group_area"],
                        layer.arrays["relative_area"], int(layer.attrs["unsegmented"]))
    except (KeyError, ValueError) as exc:
        raise LayerError(layer.path, f"not a valid segments layer: {exc}") from None


def read_segments(path: str | Path, tiles_digest: str | None = None) -> Segments:
    return segments_from_layer(read_layer(path, KIND), tiles_digest)
