"""The per-slide layered store: named tile sets, feature layers keyed by (encoder, tile set), further layers.

Every layer is one HDF5 file per slide per stage, written and read by :mod:`.layers` (atomic, completion
flag, format version, resume key, finite floats, no links). :mod:`.tile_sets` and :mod:`.features` give the
two layers every method needs typed views; :class:`SlideStore` reads a slide's layers over the stage
folders; :mod:`.versions` makes resume keys that change when the producing code does.
"""

from slidemil.slides.tile_set import PARENTS, TILES, TileSetLayer
from slidemil.store.features import (
    FeatureFileWriter,
    FeatureLayer,
    check_link,
    feature_writer,
    read_feature_attrs,
    read_feature_layer,
    write_features,
)
from slidemil.store.layers import (
    FORMAT_VERSION,
    Layer,
    LayerError,
    LayerGroup,
    LayerTooLarge,
    is_current,
    layer_writer,
    read_layer,
    read_layer_attrs,
    write_layer,
)
from slidemil.store.slide_store import SlideStore
from slidemil.store.tile_sets import (
    read_tile_set,
    tile_set_names,
    tiles_digest,
    write_tile_sets,
)
from slidemil.store.versions import code_version, feature_code_version, slide_fingerprint, tile_code_version

__all__ = [
    "FORMAT_VERSION",
    "PARENTS",
    "TILES",
    "FeatureFileWriter",
    "FeatureLayer",
    "Layer",
    "LayerError",
    "LayerGroup",
    "LayerTooLarge",
    "SlideStore",
    "TileSetLayer",
    "check_link",
    "code_version",
    "feature_code_version",
    "feature_writer",
    "is_current",
    "layer_writer",
    "read_feature_attrs",
    "read_feature_layer",
    "read_layer",
    "read_layer_attrs",
    "read_tile_set",
    "slide_fingerprint",
    "tile_code_version",
    "tile_set_names",
    "tiles_digest",
    "write_features",
    "write_layer",
    "write_tile_sets",
]
