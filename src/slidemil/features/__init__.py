"""Tile features per slide: extraction (:mod:`.extract`); the files are feature layers of :mod:`slidemil.store`."""

from slidemil.features.extract import (
    ExtractionStats,
    ExtractionSummary,
    FeatureExtractionError,
    TileDataset,
    encode_tiles,
    extract_many,
    extract_slide_features,
)

__all__ = [
    "ExtractionStats",
    "ExtractionSummary",
    "FeatureExtractionError",
    "TileDataset",
    "encode_tiles",
    "extract_many",
    "extract_slide_features",
]
