"""Per-slide access over the stage folders: a slide's tile sets, its linked features, and any named layer.

Each stage writes its own folder (``data/tiles``, ``data/features/<encoder>``, and the folders later stages
add for ``stains``, ``segments``, ``tile_labels``); a file is ``<folder>/<slide_id>.h5`` and its ``kind``
attribute says which layer it is. Adding a layer is one more entry in ``layers``: the store's core does not
change.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from slidemil.slides.tile_set import TILES, TileSetLayer
from slidemil.store.features import KIND as FEATURES
from slidemil.store.features import FeatureLayer, read_feature_attrs, read_feature_layer
from slidemil.store.layers import Layer, LayerError, is_current, read_layer
from slidemil.store.tile_sets import KIND as TILE_KIND
from slidemil.store.tile_sets import read_tile_set


class SlideStore:
    """The layers of every slide, one folder per layer kind."""

    def __init__(
        self, tiles_dir: str | Path, features_dir: str | Path, layers: Mapping[str, str | Path] | None = None
    ):
        self.dirs: dict[str, Path] = {TILE_KIND: Path(tiles_dir), FEATURES: Path(features_dir)}
        for kind, folder in (layers or {}).items():
            if kind in self.dirs:
                raise ValueError(f"layer kind {kind!r} is built in; give its folder as tiles_dir/features_dir")
            self.dirs[kind] = Path(folder)

    def path(self, slide_id: str, kind: str) -> Path:
        """Where ``kind`` of ``slide_id`` lives (also where its stage writes it)."""
        if kind not in self.dirs:
            raise KeyError(f"no folder for layer {kind!r}; known: {', '.join(sorted(self.dirs))}")
        return self.dirs[kind] / f"{slide_id}.h5"

    def tile_set(self, slide_id: str, name: str = TILES) -> TileSetLayer:
        return read_tile_set(self.path(slide_id, TILE_KIND), name)

    def features(self, slide_id: str, tile_set: str = TILES) -> FeatureLayer:
        """Features of ``tile_set``, checked to be the encoding of exactly that slide's current tile set."""
        tiles = self.tile_set(slide_id, tile_set)
        return read_feature_layer(self.path(slide_id, FEATURES), tile_set, tiles=tiles)

    def feature_dim(self) -> int:
        """The encoder's output dimension, from the first finished feature file in the folder."""
        folder = self.dirs[FEATURES]
        for p in sorted(folder.glob("*.h5")):
            if not p.name.startswith("."):
                try:
                    return int(read_feature_attrs(p)["feature_dim"])
                except LayerError:
                    continue
        raise FileNotFoundError(f"{folder}: no finished feature file (run the features stage)")

    def layer(self, slide_id: str, kind: str) -> Layer:
        """Any layer as the generic reader returns it (arrays, groups, attributes), checked."""
        return read_layer(self.path(slide_id, kind), kind)

    def has(self, slide_id: str, kind: str, resume_key: str) -> bool:
        """True when ``kind`` of ``slide_id`` is finished and was made under ``resume_key``."""
        return is_current(self.path(slide_id, kind), resume_key, kind)
