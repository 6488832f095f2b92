"""Build a segmenter by name: importing this module registers ``sam``, ``slic`` and ``kmeans``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slidemil.segmenters import kmeans as _kmeans  # noqa: F401  (registers kmeans)
from slidemil.segmenters import sam as _sam  # noqa: F401  (registers sam)
from slidemil.segmenters import slic as _slic  # noqa: F401  (registers slic)
from slidemil.segmenters.base import REGISTRY, Segmenter


def available_segmenters() -> list[str]:
    return sorted(REGISTRY)


def build_segmenter(spec: str, settings: Mapping[str, Mapping[str, Any]] | None = None) -> Segmenter:
    """``"slic"``, ``"kmeans"`` or ``"sam:<vit_b|vit_l|vit_h>"``; ``settings[kind]`` holds its knobs
    (params.yaml ``segment.<kind>``)."""
    kind, _, variant = spec.partition(":")
    if kind not in REGISTRY:
        raise KeyError(f"unknown segmenter {spec!r}; known: {available_segmenters()} (SAM as sam:vit_b|vit_l|vit_h)")
    return REGISTRY[kind](variant or None, **dict((settings or {}).get(kind, {})))
