"""Patient-grouped stratified splits: no leakage, stratification, reproducibility."""

from __future__ import annotations

import pandas as pd
import pytest

from slidemil.data.splits import SplitConfig, check_no_leakage, make_splits


def _slides(n_cases: int = 30, per_case: int = 3, labels=("a", "b", "c")) -> pd.DataFrame:
    rows = []
    for c in range(n_cases):
        for s in range(per_case):
            rows.append({"slide_id": f"s{c}_{s}", "case_id": f"case{c}", "label": labels[c % len(labels)]})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("mode", ["monte_carlo", "kfold"])
def test_grouped_and_stratified(mode):
    slides = _slides()
    splits = make_splits(slides, SplitConfig(mode=mode, folds=5, seed=1))
    check_no_leakage(splits)
    assert splits["fold"].nunique() == 5 and len(splits) == 5 * len(slides)
    for _, fold in splits.groupby("fold"):
        for part in ("train", "val", "test"):
            # every label present in every partition (10 cases per label)
            assert set(fold[fold.split == part]["label"]) == {"a", "b", "c"}
        train_frac = (fold.split == "train").mean()
        assert 0.6 <= train_frac <= 0.85


def test_kfold_test_sets_partition_the_cases():
    slides = _slides()
    splits = make_splits(slides, SplitConfig(mode="kfold", folds=5, seed=0))
    tests = [set(f[f.split == "test"]["case_id"]) for _, f in splits.groupby("fold")]
    assert set().union(*tests) == set(slides["case_id"])
    assert sum(len(t) for t in tests) == slides["case_id"].nunique()


def test_reproducible_and_seed_dependent():
    slides = _slides()
    a = make_splits(slides, SplitConfig(folds=3, seed=7))
    b = make_splits(slides, SplitConfig(folds=3, seed=7))
    c = make_splits(slides, SplitConfig(folds=3, seed=8))
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(c["split"])


def test_leak_detector_catches_leaks():
    splits = make_splits(_slides(), SplitConfig(folds=1))
    splits.loc[0, "split"] = "test" if splits.loc[0, "split"] != "test" else "train"
    with pytest.raises(AssertionError):
        check_no_leakage(splits)
