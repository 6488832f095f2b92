"""Synthetic feature bags with known signal tiles (for training/tuning tests that need many slides)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from slidemil.store import write_features

CLASSES = ["normal", "tumour"]
DIM = 32


def feature_bags(root: Path, n_cases: int = 24, seed: int = 0, strength: float = 6.0) -> pd.DataFrame:
    """Tumour bags hide 3-6 signal tiles (a shifted direction) among 40-80 noise tiles; 2 slides per case."""
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
            path = root / f"{sid}.h5"
            coords = np.stack([np.arange(n) * 224, np.zeros(n)], axis=1).astype(np.int64)
            write_features(path, x, coords, {"slide_id": sid, "encoder": "synthetic"})
            rows.append({"slide_id": sid, "case_id": f"case{c:02d}", "label": label, "features_path": str(path)})
    return pd.DataFrame(rows)
