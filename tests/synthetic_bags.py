"""Synthetic feature bags with known signal tiles (for training/tuning tests that need many slides)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from slidemil.store import write_features
from slidemil.training.data import CachedSource, feature_file_source

CLASSES = ["normal", "tumour"]
DIM = 32
LEVEL0_PX = 224


def feature_bags(root: Path, n_cases: int = 24, seed: int = 0, strength: float = 6.0) -> pd.DataFrame:
    """Tumour bags hide 3-6 signal tiles (a shifted direction) among 40-80 noise tiles; 2 slides per case.

    Written as complete feature files of the store (what the features stage writes), on a tile grid."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=DIM)
    signal /= np.linalg.norm(signal)
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    for c in range(n_cases):
        label = CLASSES[c % 2]
        for s in range(2):
            sid = f"case{c:02d}_s{s}"
            n = int(rng.integers(40, 80))
            x = rng.normal(size=(n, DIM)).astype(np.float32)
            if label == "tumour":
                k = int(rng.integers(3, 7))
                x[:k] += strength * signal
            coords = np.stack([np.arange(n) % 10, np.arange(n) // 10], axis=1).astype(np.int64) * LEVEL0_PX
            path = root / f"{sid}.h5"
            write_features(path, x, coords, {"slide_id": sid, "level0_px": LEVEL0_PX, "feature_dim": DIM})
            rows.append({"slide_id": sid, "case_id": f"case{c:02d}", "label": label, "features_path": str(path)})
    return pd.DataFrame(rows)


def bag_source(slides: pd.DataFrame) -> CachedSource:
    """The training source over the bags' feature files."""
    return feature_file_source(dict(zip(slides["slide_id"], slides["features_path"], strict=True)))


def bundle_context(feature_dim: int = DIM) -> dict:
    """The bundle context a pipeline passes (toy encoder, demo tiling)."""
    return {
        "components": {"encoders": {"tiles": {"name": "toy", "weights": "random", "feature_dim": feature_dim}}},
        "tile_sets": ["tiles"],
        "tiling": {"tile_px": 224, "target_mpp": 0.5},
    }
