"""Tile features per slide: extraction (:mod:`.extract`) and the on-disk store (:mod:`.store`)."""

from slidemil.features.extract import (
    ExtractionStats,
    ExtractionSummary,
    FeatureExtractionError,
    TileDataset,
    encode_tiles,
    extract_many,
    extract_slide_features,
)
from slidemil.features.store import (
    feature_dir,
    list_feature_files,
    read_feature_attrs,
    read_features,
    write_features,
)

__all__ = [
    "ExtractionStats",
    "ExtractionSummary",
    "FeatureExtractionError",
    "TileDataset",
    "encode_tiles",
    "extract_many",
    "extract_slide_features",
    "feature_dir",
    "list_feature_files",
    "read_feature_attrs",
    "read_features",
    "write_features",
]
