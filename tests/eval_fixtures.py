"""A small trained-families folder (summary.json + predictions.csv per family) as the train stage writes it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

CLASSES = ["normal", "subtype_a", "subtype_b"]


def write_train_dir(train_dir: Path, models: list[str], n_folds: int = 5, per_fold: int = 6, seed: int = 0) -> None:
    """Per family: test/val predictions whose skill grows with the family's position (so curves differ)."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(models):
        rows = []
        for fold in range(n_folds):
            for split in ("val", "test"):
                for i in range(per_fold):
                    label = i % len(CLASSES)
                    logits = rng.normal(size=len(CLASSES))
                    logits[label] += 0.5 + k
                    probs = np.exp(logits) / np.exp(logits).sum()
                    rows.append({"slide_id": f"s{fold}_{split}_{i}", "split": split, "fold": fold, "label": label,
                                 "pred": int(probs.argmax()), **{f"prob_{c}": p for c, p in zip(CLASSES, probs, strict=True)}})
        (train_dir / name).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(train_dir / name / "predictions.csv", index=False)
        stat = {"mean": 0.7 + 0.05 * k, "std": 0.05, "n": n_folds}
        summary = {split: {m: stat for m in ("auc", "accuracy", "balanced_accuracy", "macro_f1")}
                   for split in ("test", "val")}
        (train_dir / name / "summary.json").write_text(json.dumps(
            {"model": name, "summary": summary, "per_fold": [{"fold": f} for f in range(n_folds)]}))
