"""Slides for training: where a slide's layers come from (:class:`SlideSource`), and the datasets that hand a
method the bags of one slide per step.

A source loads each slide's layers once and keeps them (compact features of typical cohorts fit in memory);
labels are attached by the dataset, so the same source serves every fold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from slidemil.methods import LayerSpec, Method, SlideData, TileSetView
from slidemil.segmenters.layer import KIND as SEGMENTS
from slidemil.segmenters.layer import segments_from_layer
from slidemil.store import SlideStore, tiles_digest


@dataclass(frozen=True)
class SlideRef:
    """One labelled slide of a cohort (label = class index)."""

    slide_id: str
    label: int


class SlideSource(Protocol):
    def load(self, slide_id: str) -> SlideData: ...


class CachedSource:
    """Wraps a ``slide_id -> SlideData`` loader and keeps every slide it loaded."""

    def __init__(self, loader: Callable[[str], SlideData]):
        self._loader = loader
        self._cache: dict[str, SlideData] = {}

    def load(self, slide_id: str) -> SlideData:
        if slide_id not in self._cache:
            self._cache[slide_id] = self._loader(slide_id)
        return self._cache[slide_id]


def store_source(store: SlideStore, tile_sets: Sequence[str] = ("tiles",),
                 layers: Sequence[LayerSpec] = ()) -> CachedSource:
    """A source over the pipeline's store: each tile set's geometry (and children) from the tile file, its
    features from the feature file, checked to be the encoding of exactly those tiles. ``layers`` adds further
    layers methods require (``LayerSpec("segments")``: memberships checked to index the current tile set)."""
    extra = [spec for spec in layers if spec.kind not in ("tile_set", "features")]
    for spec in extra:
        if spec.kind != SEGMENTS:
            raise ValueError(f"store_source cannot load layer {spec} yet")

    def load(slide_id: str) -> SlideData:
        views, feats, more = {}, {}, {}
        for name in tile_sets:
            tiles = store.tile_set(slide_id, name)
            views[name] = TileSetView(tiles.coords, int(tiles.geometry.level0_px), tiles.children)
            feats[name] = store.features(slide_id, name).features
        for spec in extra:
            digest = tiles_digest(store.tile_set(slide_id, spec.name))
            more[SEGMENTS] = segments_from_layer(store.layer(slide_id, SEGMENTS), digest)
        return SlideData(slide_id, None, views, feats, more)

    return CachedSource(load)


def feature_file_source(paths: Mapping[str, str | Path]) -> CachedSource:
    """A ``tiles``-only source over feature files alone (no tile files: tests, feature uploads, benchmarks);
    the tile footprint comes from the geometry the features stage copies into the file."""
    from slidemil.store import read_feature_layer

    def load(slide_id: str) -> SlideData:
        layer = read_feature_layer(paths[slide_id], "tiles")
        view = TileSetView(layer.coords, int(layer.attrs.get("level0_px") or 0))
        return SlideData(slide_id, None, {"tiles": view}, {"tiles": layer.features})

    return CachedSource(load)


class SlideBagDataset(Dataset):
    """Item i = the bags of slide i (as the method builds them) with its label and position."""

    def __init__(self, refs: Sequence[SlideRef], source: SlideSource, method: Method, *, training: bool,
                 seed: int = 0):
        self.refs = list(refs)
        self.source = source
        self.method = method
        self.training = training
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.refs)

    def slide(self, i: int) -> SlideData:
        ref = self.refs[i]
        return replace(self.source.load(ref.slide_id), label=ref.label)

    def __getitem__(self, i: int) -> dict:
        slide = self.slide(i)
        bags = self.method.bags(slide, training=self.training, rng=self.rng)
        return {"slide_id": slide.slide_id, "label": slide.label, "index": i, "bags": bags}

    def slides(self) -> list[SlideData]:
        return [self.slide(i) for i in range(len(self))]


def one_slide(batch: list[dict]) -> dict:
    """Collate for batch_size=1: one slide (its bags) per step, since bags differ in size."""
    (item,) = batch
    return item


def balanced_sampler(refs: Sequence[SlideRef], seed: int) -> WeightedRandomSampler:
    """Class-balanced sampling: weight N / N_class per slide (CLAM's option)."""
    labels = np.array([r.label for r in refs])
    counts = np.bincount(labels)
    weights = len(labels) / counts[labels]
    gen = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(refs), replacement=True,
                                 generator=gen)
