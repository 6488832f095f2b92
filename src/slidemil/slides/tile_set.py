"""The tile set type: where the tiles of one named set of one slide are and how to re-read each exactly.

It lives with slide reading (tiling produces it) so that ``slides`` does not depend on the store that persists
it (:mod:`slidemil.store.tile_sets`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slidemil.slides.geometry import TileGeometry

TILES = "tiles"
PARENTS = "parents"


@dataclass
class TileSetLayer:
    """One named tile set of one slide: where every tile is, how to re-read it, and (parents) its children."""

    name: str
    slide_id: str
    slide_path: str
    coords: np.ndarray  # (N, 2) int64 level-0 top-left x, y
    geometry: TileGeometry
    tissue_coverage: np.ndarray  # (N,) float32
    children: np.ndarray | None = None  # parents only: (P, s*s) int64 into "tiles", -1 = child dropped
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.coords.shape[0])
