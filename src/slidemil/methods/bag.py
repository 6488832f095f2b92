"""What a method consumes: one slide's layers (:class:`SlideData`) and the bags built from them (:class:`Bag`).

Why two types: the store holds per-slide *layers* (tile sets, feature layers, later stains, segments, tile
labels); a method turns one slide's layers into one or several *bags* (the whole slide for CLAM; random
parent bags for MSA; pseudo-bags for SAM-MIL). The pipeline fills :class:`SlideData` from the store, serving
fills it in memory from the same tiling and encoding functions, so both go through the same bag builder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass
class TileSetView:
    """The part of a stored tile set a method needs: level-0 coordinates, footprint and (parents) children."""

    coords: np.ndarray  # (N, 2) int64 level-0 top-left x, y
    level0_px: int  # tile side in level-0 pixels (for painting and localisation)
    children: np.ndarray | None = None  # parents only: (P, s*s) indices into "tiles", -1 = dropped

    def __len__(self) -> int:
        return int(self.coords.shape[0])


@dataclass
class SlideData:
    """One slide's layers, keyed by name. ``features`` maps a tile-set name to its (N, d) float32 matrix."""

    slide_id: str
    label: int | None
    tile_sets: dict[str, TileSetView]
    features: dict[str, np.ndarray]
    layers: dict[str, Any] = field(default_factory=dict)  # stains, segments, tile_labels, ...

    def __post_init__(self) -> None:
        for name, feats in self.features.items():
            if name not in self.tile_sets:
                raise ValueError(f"{self.slide_id}: features for tile set {name!r} without that tile set")
            n = len(self.tile_sets[name])
            if feats.ndim != 2 or feats.shape[0] != n:
                raise ValueError(f"{self.slide_id}: {name!r} features have shape {feats.shape}, the tile set "
                                 f"has {n} tiles")

    def n_tiles(self, tile_set: str = "tiles") -> int:
        return len(self.tile_sets[tile_set])


@dataclass
class Bag:
    """One forward pass worth of input.

    Attributes:
        slide_id: the slide the bag comes from (several bags may share one).
        label: slide label index, or None at inference.
        tokens: token features by kind, e.g. ``{"tiles": [N, d]}``; multi-scale bags add ``"parents"``,
            SAM-MIL adds ``"groups"``.
        index: for each token kind drawn from a tile set, the row of each token in that tile set (so scores
            on a sub-bag map back onto the slide).
        children: [P, s*s] indices into ``tokens["tiles"]`` (-1 = missing) for multi-scale bags.
        groups: [N, G] bool tile-to-group memberships (a tile may be in several groups).
        masks: named boolean masks over token kinds (e.g. masked tiles of a SAM-guided masking step).
    """

    slide_id: str
    label: int | None
    tokens: dict[str, Tensor]
    index: dict[str, Tensor] = field(default_factory=dict)
    children: Tensor | None = None
    groups: Tensor | None = None
    masks: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Bag:
        """The same bag on ``device`` (labels and metadata unchanged)."""

        def move(d: Mapping[str, Tensor]) -> dict[str, Tensor]:
            return {k: v.to(device) for k, v in d.items()}

        return Bag(self.slide_id, self.label, move(self.tokens), move(self.index),
                   None if self.children is None else self.children.to(device),
                   None if self.groups is None else self.groups.to(device), move(self.masks), dict(self.meta))

    def label_tensor(self) -> Tensor:
        if self.label is None:
            raise ValueError(f"{self.slide_id}: bag has no label (inference bag used for training?)")
        return torch.tensor(self.label)


def whole_slide_bag(slide: SlideData, tile_set: str = "tiles") -> Bag:
    """Every tile of one tile set as one bag (CLAM, ABMIL, pooling)."""
    feats = torch.from_numpy(np.ascontiguousarray(slide.features[tile_set], dtype=np.float32))
    if feats.shape[0] == 0:
        raise ValueError(f"{slide.slide_id}: empty bag, the slide has 0 tiles in {tile_set!r}")
    return Bag(slide.slide_id, slide.label, {tile_set: feats},
               {tile_set: torch.arange(feats.shape[0])})


def random_parent_bags(slide: SlideData, n_bags: int, bag_size: int, rng: np.random.Generator) -> list[Bag]:
    """``n_bags`` bags of ``bag_size`` random parents (with replacement when the slide has fewer), each
    carrying its parents' features, their children's features and the children relation re-indexed into the
    bag (multi-scale methods, methods.md section B)."""
    parents = slide.tile_sets["parents"]
    if parents.children is None:
        raise ValueError(f"{slide.slide_id}: the parents tile set has no children relation")
    p_feats, t_feats = slide.features["parents"], slide.features["tiles"]
    n_parents = len(parents)
    if n_parents == 0:
        raise ValueError(f"{slide.slide_id}: no parent tiles")
    bags = []
    for _ in range(n_bags):
        pick = rng.choice(n_parents, size=bag_size, replace=n_parents < bag_size)
        kids = parents.children[pick]  # (B, s*s) into the slide's tiles
        kept = np.unique(kids[kids >= 0])
        remap = np.full(len(slide.tile_sets["tiles"]), -1, dtype=np.int64)
        remap[kept] = np.arange(kept.size)
        local = np.where(kids >= 0, remap[np.maximum(kids, 0)], -1)
        bags.append(Bag(
            slide.slide_id, slide.label,
            {"parents": torch.from_numpy(p_feats[pick].astype(np.float32)),
             "tiles": torch.from_numpy(t_feats[kept].astype(np.float32))},
            {"parents": torch.from_numpy(pick.astype(np.int64)), "tiles": torch.from_numpy(kept)},
            children=torch.from_numpy(local),
        ))
    return bags


def pseudo_bags(bag: Bag, n_bags: int, rng: np.random.Generator, tile_set: str = "tiles") -> list[Bag]:
    """Split a bag's tiles at random into ``n_bags`` disjoint pseudo-bags carrying the slide label (SAM-MIL,
    methods.md section D). Group memberships follow their tiles; bags never come out empty when the slide
    has at least ``n_bags`` tiles."""
    n = bag.tokens[tile_set].shape[0]
    order = rng.permutation(n)
    out = []
    for part in np.array_split(order, min(n_bags, n)):
        idx = torch.from_numpy(np.sort(part))
        out.append(Bag(
            bag.slide_id, bag.label, {tile_set: bag.tokens[tile_set][idx]},
            {tile_set: bag.index[tile_set][idx] if tile_set in bag.index else idx},
            groups=None if bag.groups is None else bag.groups[idx],
            meta={**bag.meta, "pseudo_bag": True},
        ))
    return out
