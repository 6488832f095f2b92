"""The ``stains`` store layer: one HDF5 file per slide (``data/stains/<slide>.h5``) written and read through
:func:`slidemil.store.write_layer` / :func:`slidemil.store.read_layer` (ADR 0008), like every other layer.

Arrays: ``vectors`` (2, 3) and ``max_concentrations`` (2,). Attributes: ``source`` (fitted / fallback),
``n_pixels``, the fit settings (JSON), the tile set it was fitted on and that set's ``tiles_digest`` (a
re-tiled slide must not be paired with an old matrix). The resume key holds the settings, the digest, the
tile file's own resume key (slide content, tiling settings and code) and the code version of this package
and of the pixel reader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from slidemil.stains.config import StainConfig
from slidemil.stains.matrix import StainMatrix
from slidemil.store.layers import Layer, LayerError, read_layer, write_layer
from slidemil.utils.hashing import code_version, config_hash

KIND = "stains"
#: modules whose code decides the matrix: this package, the pixel reads, the layer writer
STAIN_CODE_MODULES = ("slidemil.stains", "slidemil.slides.reader", "slidemil.slides.backends",
                      "slidemil.store.layers")


def stains_resume_key(config: StainConfig, tiles_digest: str, tiles_key: str) -> str:
    return config_hash({"config": config.to_dict(), "tiles": tiles_digest, "tiles_key": tiles_key,
                        "code": code_version(STAIN_CODE_MODULES)})


def write_stains(path: str | Path, matrix: StainMatrix, *, config: StainConfig, tiles_digest: str,
                 resume_key: str, tile_set: str = "tiles") -> Path:
    return write_layer(
        path, KIND,
        {"vectors": matrix.vectors, "max_concentrations": matrix.max_concentrations},
        {"source": matrix.source, "n_pixels": matrix.n_pixels, "config": json.dumps(config.to_dict(), sort_keys=True),
         "tile_set": tile_set, "tiles_digest": tiles_digest},
        resume_key=resume_key,
    )


def stains_from_layer(layer: Layer, tiles_digest: str | None = None) -> StainMatrix:
    """The typed view of a read layer; refuses a matrix fitted on other tiles than ``tiles_digest``."""
    if tiles_digest is not None and layer.attrs.get("tiles_digest") != tiles_digest:
        raise LayerError(layer.path, "the stain matrix was fitted on other tiles than the current tile set "
                                     "(re-run the stains stage)")
    try:
        return StainMatrix(np.asarray(layer.arrays["vectors"]), np.asarray(layer.arrays["max_concentrations"]),
                           str(layer.attrs["source"]), int(layer.attrs["n_pixels"]))
    except (KeyError, ValueError) as exc:
        raise LayerError(layer.path, f"not a valid stains layer: {exc}") from None


def read_stains(path: str | Path, tiles_digest: str | None = None) -> StainMatrix:
    return stains_from_layer(read_layer(path, KIND), tiles_digest)
