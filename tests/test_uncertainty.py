"""Bootstrap intervals against cases small enough to enumerate by hand."""

from __future__ import annotations

import numpy as np
import pytest

from slidemil.evaluation.uncertainty import bootstrap_cis, bootstrap_distribution, resample_indices

# two slides, one per class; both predicted class 0 (slide 1 is wrong), class-1 scores ranked correctly
Y = np.array([0, 1])
P = np.array([[0.8, 0.2], [0.6, 0.4]])


def test_two_slide_case_matches_the_enumeration():
    """Resamples of 2 slides: {0,0} p=1/4 (balanced accuracy 1), {1,1} p=1/4 (0), {0,1} p=1/2 (0.5).
    AUC is 1 whenever both classes are drawn and undefined otherwise."""
    dist = bootstrap_distribution(Y, P, n_boot=4000, seed=1)
    ba = dist["balanced_accuracy"]
    assert np.mean(ba == 1.0) == pytest.approx(0.25, abs=0.03)
    assert np.mean(ba == 0.0) == pytest.approx(0.25, abs=0.03)
    assert np.mean(ba == 0.5) == pytest.approx(0.5, abs=0.03)
    auc = dist["auc"]
    assert np.mean(np.isnan(auc)) == pytest.approx(0.5, abs=0.03)
    assert set(auc[~np.isnan(auc)]) == {1.0}

    ci = bootstrap_cis(Y, P, n_boot=4000, seed=1)
    assert (ci["balanced_accuracy"].estimate, ci["balanced_accuracy"].low, ci["balanced_accuracy"].high) == (0.5, 0, 1)
    assert (ci["auc"].estimate, ci["auc"].low, ci["auc"].high) == (1.0, 1.0, 1.0)
    assert ci["auc"].n_valid == int((~np.isnan(auc)).sum())
    assert ci["auc"].unit == "slide" and ci["auc"].n_units == 2


def test_case_resampling_keeps_a_patients_slides_together():
    groups = np.array(["A", "A", "A", "B", "C"])
    rng = np.random.default_rng(0)
    sizes = set()
    for _ in range(300):
        idx = resample_indices(rng, groups, len(groups))
        counts = np.bincount(idx, minlength=5)
        assert counts[0] == counts[1] == counts[2]  # case A's slides come and go together
        sizes.add(len(idx))
    # 3 cases drawn: 0-3 copies of A (3 slides each), the rest single-slide cases
    assert sizes == {3, 5, 7, 9}


def test_intervals_resample_patients_when_cases_repeat():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 0, 1, 0, 1], 3)
    cases = np.repeat([f"c{i}" for i in range(6)], 3)
    p1 = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.25, len(y)), 0.01, 0.99)
    probs = np.stack([1 - p1, p1], 1)
    by_case = bootstrap_cis(y, probs, case_ids=cases, n_boot=300, seed=0)
    by_slide = bootstrap_cis(y, probs, n_boot=300, seed=0)
    assert by_case["auc"].unit == "case" and by_case["auc"].n_units == 6
    assert by_slide["auc"].unit == "slide" and by_slide["auc"].n_units == 18
    assert by_case["auc"].estimate == by_slide["auc"].estimate
    # one slide per case: slide resampling
    assert bootstrap_cis(y, probs, case_ids=np.arange(18), n_boot=10)["auc"].unit == "slide"


def test_seeded_and_macro_auc_for_three_classes():
    rng = np.random.default_rng(0)
    y = np.tile([0, 1, 2], 10)
    logits = rng.normal(0, 1, (30, 3)) + 2.0 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    a = bootstrap_cis(y, probs, n_boot=200, seed=5)
    b = bootstrap_cis(y, probs, n_boot=200, seed=5)
    c = bootstrap_cis(y, probs, n_boot=200, seed=6)
    assert a == b and a["auc"].low != c["auc"].low
    assert a["auc"].low <= a["auc"].estimate <= a["auc"].high
    assert 0.5 < a["auc"].low < 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="level"):
        bootstrap_cis(Y, P, level=95)
    with pytest.raises(ValueError, match="2 labels but 1"):
        bootstrap_distribution(Y, P[:1])


def test_fast_metrics_equal_slide_metrics():
    """The bootstrap's numpy metrics give exactly what the CV summary reports (sklearn)."""
    from slidemil.evaluation.metrics import slide_metrics
    from slidemil.evaluation.uncertainty import fast_balanced_accuracy, fast_macro_auc, fast_macro_f1

    rng = np.random.default_rng(1)
    for n_classes, n in ((2, 9), (3, 14), (3, 5)):
        y = rng.integers(0, n_classes, n)
        y[:n_classes] = np.arange(n_classes)  # every class among the labels (as in a cohort)
        probs = np.round(rng.dirichlet(np.ones(n_classes), n), 1)  # rounded: ties
        ref = slide_metrics(y, probs)
        assert fast_macro_auc(y, probs) == pytest.approx(ref["auc"], abs=1e-12)
        assert fast_balanced_accuracy(y, probs) == pytest.approx(ref["balanced_accuracy"], abs=1e-12)
        assert fast_macro_f1(y, probs) == pytest.approx(ref["macro_f1"], abs=1e-12)


def test_macro_f1_of_a_resample_averages_the_classes_that_occur():
    from slidemil.evaluation.uncertainty import fast_macro_f1

    probs = np.eye(3)[[0, 0, 1]]
    assert fast_macro_f1(np.array([0, 0, 1]), probs) == 1.0  # class 2 neither drawn nor predicted
    assert fast_macro_f1(np.array([0, 0, 0]), probs) == pytest.approx(np.mean([0.8, 0.0]))  # class 1 predicted
