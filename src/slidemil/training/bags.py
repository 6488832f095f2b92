"""Bags of tile features for slide-level MIL training: one slide = one bag, read from the feature store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from slidemil.store import read_feature_layer


@dataclass(frozen=True)
class BagItem:
    slide_id: str
    features_path: Path
    label: int


class FeatureCache:
    """Features of many slides kept in memory once (demo-scale and typical cohorts of compact features);
    with ``preload=False`` each access reads the HDF5 (cheap: one contiguous dataset)."""

    def __init__(self, preload: bool = True):
        self.preload = preload
        self._cache: dict[Path, torch.Tensor] = {}

    def get(self, path: Path) -> torch.Tensor:
        if path in self._cache:
            return self._cache[path]
        with torch.inference_mode(False):
            # a normal tensor even when first touched inside a validation/inference block, so it can be
            # reused for training later
            feats = torch.from_numpy(read_feature_layer(path).features)
        if self.preload:
            self._cache[path] = feats
        return feats


class BagDataset(Dataset):
    def __init__(self, items: list[BagItem], cache: FeatureCache | None = None):
        self.items = items
        self.cache = cache or FeatureCache()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        return {"features": self.cache.get(item.features_path), "label": item.label, "slide_id": item.slide_id}


def single_bag(batch: list[dict]) -> dict:
    """Collate for batch_size=1: one bag per step (bags differ in size)."""
    (bag,) = batch
    return {"features": bag["features"], "label": torch.tensor(bag["label"]), "slide_id": bag["slide_id"]}


def balanced_sampler(items: list[BagItem], seed: int) -> WeightedRandomSampler:
    """Class-balanced sampling: weight N / N_class per slide (CLAM's option)."""
    labels = np.array([it.label for it in items])
    counts = np.bincount(labels)
    weights = len(labels) / counts[labels]
    gen = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(items), replacement=True, generator=gen)
