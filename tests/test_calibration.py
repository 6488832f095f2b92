"""ECE, temperature scaling and the operating point against values known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from slidemil.evaluation.calibration import (
    CalibrationConfig,
    apply_temperature,
    choose_threshold,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    plot_reliability,
    reliability_table,
    sensitivity_specificity,
)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_ece_hand_case_and_bins():
    # 10 slides, all at confidence 0.9 for class 0, 6 of them class 0: |0.6 - 0.9| = 0.3
    probs = np.tile([0.9, 0.1], (10, 1))
    y = np.array([0] * 6 + [1] * 4)
    assert expected_calibration_error(y, probs, 10) == pytest.approx(0.3)
    t = reliability_table(y, probs, 10)
    assert len(t) == 10 and t["count"].sum() == 10
    assert t.loc[8, "count"] == 10  # 0.9 lies in (0.8, 0.9]
    # two bins, two groups: (0.55 conf, 50% right) and (0.95 conf, 100% right) -> 0.5*0.05 + 0.5*0.05
    probs = np.array([[0.55, 0.45]] * 4 + [[0.95, 0.05]] * 4)
    y = np.array([0, 1, 0, 1, 0, 0, 0, 0])
    assert expected_calibration_error(y, probs, 10) == pytest.approx(0.05)


def test_perfectly_calibrated_data_has_near_zero_ece():
    rng = np.random.default_rng(0)
    n = 40000
    conf = rng.uniform(0.5, 1.0, n)
    correct = rng.uniform(size=n) < conf
    y = np.where(correct, 0, 1)
    probs = np.stack([conf, 1 - conf], 1)
    assert expected_calibration_error(y, probs, 10) < 0.01


def test_temperature_recovers_the_generating_temperature():
    """Labels drawn from softmax(z / 2.5): the model's softmax(z) is overconfident and T ~ 2.5 fixes it."""
    rng = np.random.default_rng(1)
    n, t_true = 6000, 2.5
    z = rng.normal(0, 4.0, (n, 3))
    true_p = _softmax(z / t_true)
    y = np.array([rng.choice(3, p=p) for p in true_p])
    probs = _softmax(z)
    t = fit_temperature(y, probs)
    assert t == pytest.approx(t_true, rel=0.08)
    assert expected_calibration_error(y, apply_temperature(probs, t)) < 0.3 * expected_calibration_error(y, probs)
    assert (apply_temperature(probs, t).argmax(1) == probs.argmax(1)).all()
    np.testing.assert_allclose(apply_temperature(probs, 1.0), probs)


def test_separable_validation_hits_the_bound():
    probs = np.array([[0.7, 0.3], [0.3, 0.7]])
    assert fit_temperature(np.array([0, 1]), probs, (0.25, 4.0)) == pytest.approx(0.25, rel=1e-3)


def test_operating_point_youden_and_target_sensitivity():
    # disease score = p(class 1); negatives 0.1 0.2 0.6, positives 0.4 0.7 0.9
    s = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.stack([1 - s, s], 1)
    # Youden: J = 2/3 at (0.2, 0.4) midpoint 0.3 (sens 1, spec 2/3) and at (0.6, 0.7) midpoint 0.65 (2/3, 1)
    # -> tie, the one nearer 0.5 is 0.65
    assert choose_threshold(y, probs) == pytest.approx(0.65)
    # sensitivity >= 0.9 needs every positive: highest such threshold is the midpoint below 0.4
    assert choose_threshold(y, probs, rule="sensitivity", target_sensitivity=0.9) == pytest.approx(0.3)
    ss = sensitivity_specificity(y, probs, 0.3)
    assert (ss["sensitivity"], ss["specificity"]) == (1.0, pytest.approx(2 / 3))
    # one class only: nothing to choose, the untuned default
    assert choose_threshold(np.ones(3, int), probs[3:]) == 0.5


def test_multiclass_operating_point_uses_the_negative_class():
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    y = np.array([0, 1, 2, 0])
    cfg = CalibrationConfig.from_dict({"negative_class": "normal", "temperature": False})
    fit = fit_calibration(y, probs, ["normal", "a", "b"], cfg)
    assert fit.temperature == 1.0 and fit.negative_class == "normal"
    ss = sensitivity_specificity(y, probs, fit.threshold, 0)
    assert ss["sensitivity"] == 1.0 and ss["specificity"] == 1.0
    with pytest.raises(ValueError, match="not one of"):
        CalibrationConfig.from_dict({"negative_class": "tumour"}).negative_index(["normal", "a"])
    with pytest.raises(ValueError, match="rule"):
        CalibrationConfig.from_dict({"rule": "f1"})


def test_reliability_png(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1], 50)
    y = rng.integers(0, 2, 50)
    path = plot_reliability({"raw": reliability_table(y, probs)}, tmp_path / "r.png", "test")
    assert path.stat().st_size > 1000


def test_soften_only_bounds_keep_separable_validation_at_t1():
    """Bounds [1, 4] (the demo's): a separable validation set cannot sharpen the model (T stays 1)."""
    cfg = CalibrationConfig.from_dict({"temperature_bounds": [1.0, 4.0]})
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9]])
    assert fit_temperature(np.array([0, 1, 0, 1]), probs, cfg.temperature_bounds) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="low <= 1 <= high"):
        CalibrationConfig.from_dict({"temperature_bounds": [1.5, 4.0]})
