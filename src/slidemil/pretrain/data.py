"""Stage-1 minibatches: coarse (parent) tiles with their own fine (child) tiles, from slides of every class.

Why batches are built per slide and per parent, not drawn tile by tile: the paper's positives are a parent's
own children and the other tiles of its slide, and its negatives are tiles of other classes, so every batch
needs several parents per slide, their children, and slides of at least two classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from slidemil.pretrain.loss import COARSE, FINE
from slidemil.slides.tile_set import TileSetLayer

#: (slide index, tile set name, row) -> uint8 (H, W, 3) tile
TileReader = Callable[[int, str, int], np.ndarray]


@dataclass(frozen=True)
class MultiScaleSlide:
    """One training slide: its label and its parents' children (P, s*s) into its ``tiles`` (-1 = dropped)."""

    slide_id: str
    label: int
    children: np.ndarray

    def usable_parents(self) -> np.ndarray:
        """Parents with at least one child left (a lone parent has no cross-scale positive)."""
        return np.flatnonzero((self.children >= 0).any(1))


@dataclass
class Batch:
    """``tiles`` uint8 [M, H, W, 3] and per tile: slide index, scale (COARSE / FINE), place (parent number in
    the batch) and slide label."""

    tiles: Tensor
    slide: Tensor
    scale: Tensor
    place: Tensor
    label: Tensor


class MultiScaleBatches:
    """Draws batches of ``slides_per_batch`` slides (classes taken in turn), ``parents_per_slide`` parents each,
    every parent with up to ``children_per_parent`` of its kept children (all when None). ``scales`` keeps only
    the tiles of those scales (a single scale trains one encoder of the conventional multi-scale baseline)."""

    def __init__(self, slides: Sequence[MultiScaleSlide], read: TileReader, *, slides_per_batch: int = 4,
                 parents_per_slide: int = 2, children_per_parent: int | None = None,
                 scales: tuple[int, ...] = (COARSE, FINE)) -> None:
        self.slides = [s for s in slides if s.usable_parents().size]
        if len({s.label for s in self.slides}) < 2:
            raise ValueError("contrastive pretraining needs slides of at least two classes (negatives are "
                             "tiles of other classes)")
        self.read = read
        self.slides_per_batch = slides_per_batch
        self.parents_per_slide = parents_per_slide
        self.children_per_parent = children_per_parent
        self.scales = scales  # one scale only: batches for a single-scale ("conventional") encoder
        self._index = {id(s): i for i, s in enumerate(slides)}
        self._by_class: dict[int, list[MultiScaleSlide]] = {}
        for s in self.slides:
            self._by_class.setdefault(s.label, []).append(s)

    def pick_slides(self, rng: np.random.Generator) -> list[MultiScaleSlide]:
        """Classes in turn (a random order each batch), a random slide of each, until the batch is full."""
        classes = rng.permutation(sorted(self._by_class))
        picked = []
        for k in range(self.slides_per_batch):
            pool = self._by_class[int(classes[k % len(classes)])]
            picked.append(pool[int(rng.integers(len(pool)))])
        return picked

    def sample(self, rng: np.random.Generator) -> Batch:
        tiles, slide, scale, place, label = [], [], [], [], []
        n_place = 0
        for s in self.pick_slides(rng):
            idx = self._index[id(s)]
            usable = s.usable_parents()
            chosen = rng.choice(usable, size=min(self.parents_per_slide, usable.size), replace=False)
            for p in chosen:
                kids = s.children[p][s.children[p] >= 0]
                if self.children_per_parent is not None and kids.size > self.children_per_parent:
                    kids = rng.choice(kids, size=self.children_per_parent, replace=False)
                rows = [("parents", int(p), COARSE)] + [("tiles", int(c), FINE) for c in kids]
                rows = [r for r in rows if r[2] in self.scales]
                for tile_set, row, sc in rows:
                    tiles.append(self.read(idx, tile_set, row))
                    slide.append(idx)
                    scale.append(sc)
                    place.append(n_place)
                    label.append(s.label)
                n_place += 1
        as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
        return Batch(torch.from_numpy(np.stack(tiles)), as_long(slide), as_long(scale), as_long(place),
                     as_long(label))


def store_reader(tile_sets: Sequence[dict[str, TileSetLayer]]) -> TileReader:
    """A :data:`TileReader` over the tile files: each tile re-read from its slide exactly as planned (one open
    reader per slide, kept)."""
    from slidemil.slides.backends import open_slide

    readers: dict[int, object] = {}

    def read(i: int, name: str, row: int) -> np.ndarray:
        layer = tile_sets[i][name]
        if i not in readers:
            readers[i] = open_slide(layer.slide_path, mpp=layer.geometry.slide_mpp)
        x, y = layer.coords[row]
        return np.ascontiguousarray(readers[i].read_tile((int(x), int(y)), layer.geometry), dtype=np.uint8)

    return read
