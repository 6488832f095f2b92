"""Patient-grouped, label-stratified splits (CLAM protocol: k Monte-Carlo folds of train/val/test).

No patient (``case_id``) ever appears in two partitions of one fold, so slides of one person cannot leak
between training and testing. Model selection uses ``val`` only; ``test`` is touched once, for reporting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SplitConfig:
    """``mode``: ``monte_carlo`` (k independent 80/10/10 draws) or ``kfold`` (k disjoint test folds)."""

    mode: str = "monte_carlo"
    folds: int = 10
    val_frac: float = 0.1
    test_frac: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("monte_carlo", "kfold"):
            raise ValueError(f"split mode must be 'monte_carlo' or 'kfold', got {self.mode!r}")
        if self.folds < 1:
            raise ValueError("folds must be >= 1")
        if not (0 < self.val_frac < 1 and 0 <= self.test_frac < 1 and self.val_frac + self.test_frac < 1):
            raise ValueError(f"bad fractions val={self.val_frac} test={self.test_frac}")


def case_table(slides: pd.DataFrame) -> pd.DataFrame:
    """One row per case with its label; a case with slides of several labels is stratified by the majority."""
    counts = slides.groupby(["case_id", "label"]).size().reset_index(name="n")
    counts = counts.sort_values(["case_id", "n", "label"], ascending=[True, False, True])
    return counts.drop_duplicates("case_id")[["case_id", "label"]].reset_index(drop=True)


def _n_take(n: int, frac: float) -> int:
    """Cases of one label to put in a partition: at least one when the label has >= 3 cases."""
    if frac <= 0:
        return 0
    return max(1, round(n * frac)) if n >= 3 else 0


def make_splits(slides: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """Columns ``fold, slide_id, case_id, label, split`` (split in train/val/test), one row per slide per fold."""
    for col in ("slide_id", "case_id", "label"):
        if col not in slides.columns:
            raise ValueError(f"splits need a '{col}' column")
    cases = case_table(slides)
    rng = np.random.default_rng(cfg.seed)
    assignments: list[dict[str, str]] = []
    if cfg.mode == "monte_carlo":
        for _ in range(cfg.folds):
            fold: dict[str, str] = {}
            for _, group in cases.groupby("label"):
                ids = rng.permutation(group["case_id"].to_numpy())
                n_test, n_val = _n_take(len(ids), cfg.test_frac), _n_take(len(ids), cfg.val_frac)
                fold.update({c: "test" for c in ids[:n_test]})
                fold.update({c: "val" for c in ids[n_test : n_test + n_val]})
                fold.update({c: "train" for c in ids[n_test + n_val :]})
            assignments.append(fold)
    else:
        per_label = {lab: rng.permutation(g["case_id"].to_numpy()) for lab, g in cases.groupby("label")}
        for k in range(cfg.folds):
            fold = {}
            for ids in per_label.values():
                test = set(ids[k :: cfg.folds])
                rest = [c for c in ids if c not in test]
                rest = list(rng.permutation(rest))
                n_val = _n_take(len(rest), cfg.val_frac / (1 - 1 / cfg.folds))
                fold.update({c: "test" for c in test})
                fold.update({c: "val" for c in rest[:n_val]})
                fold.update({c: "train" for c in rest[n_val:]})
            assignments.append(fold)
    rows = []
    for k, fold in enumerate(assignments):
        part = slides[["slide_id", "case_id", "label"]].copy()
        part["split"] = part["case_id"].map(fold)
        part.insert(0, "fold", k)
        rows.append(part)
    out = pd.concat(rows, ignore_index=True)
    assert not out["split"].isna().any()
    return out


def check_no_leakage(splits: pd.DataFrame) -> None:
    """Raise if any case appears in more than one partition within a fold."""
    per = splits.groupby(["fold", "case_id"])["split"].nunique()
    leaked = per[per > 1]
    if not leaked.empty:
        raise AssertionError(f"cases in several partitions: {leaked.index.tolist()[:5]}")
