"""Can the probabilities be trusted? Expected calibration error, reliability diagrams, temperature scaling and
the decision threshold (operating point) chosen on validation data.

- **ECE** is the top-label ECE with ``n_bins`` *equal-width* bins on [0, 1] (bin ``k`` holds confidences in
  ``(k/n, (k+1)/n]``, the first also 0): sum over bins of (bin share of slides) x |accuracy - mean confidence|,
  where confidence is the highest class probability and accuracy whether that class is the true one.
- **Temperature scaling** (Guo et al. 2017) divides the logits by one scalar T fitted by minimising the NLL on
  *validation* predictions only (a bounded Brent search over log T); it never changes the predicted class.
  The models return probabilities, and ``log p`` are logits up to a per-slide constant, which softmax ignores.
- **Operating point**: a threshold on the disease score ``1 - p(negative class)`` (binary: ``p(class 1)``), chosen
  on validation by Youden's J or as the highest threshold reaching a target sensitivity, then reported as
  sensitivity / specificity on test or external slides. Thresholds are midpoints between adjacent validation
  scores, so a threshold is never a single slide's score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

EPS = 1e-12


@dataclass(frozen=True)
class CalibrationConfig:
    """``params.yaml: calibration``."""

    temperature: bool = True  # fit T on validation (False: T = 1)
    temperature_bounds: tuple[float, float] = (0.05, 20.0)
    ece_bins: int = 10
    rule: Literal["youden", "sensitivity"] = "youden"
    target_sensitivity: float = 0.9  # for rule "sensitivity"
    negative_class: str | None = None  # None: the first class

    @classmethod
    def from_dict(cls, d: dict | None) -> CalibrationConfig:
        d = dict(d or {})
        if "temperature_bounds" in d:
            d["temperature_bounds"] = tuple(float(v) for v in d["temperature_bounds"])
        cfg = cls(**d)
        if cfg.rule not in ("youden", "sensitivity"):
            raise ValueError(f"calibration.rule must be youden or sensitivity, got {cfg.rule!r}")
        lo, hi = cfg.temperature_bounds
        if not (0 < lo <= 1 <= hi and lo < hi):  # T = 1 (no change) is always a candidate
            raise ValueError(f"calibration.temperature_bounds must satisfy 0 < low <= 1 <= high, low < high, "
                             f"got {lo, hi}")
        if not 0 < cfg.target_sensitivity <= 1 or cfg.ece_bins < 1:
            raise ValueError("calibration.target_sensitivity must be in (0, 1] and ece_bins >= 1")
        return cfg

    def negative_index(self, class_names: list[str]) -> int:
        if self.negative_class is None:
            return 0
        if self.negative_class not in class_names:
            raise ValueError(f"calibration.negative_class {self.negative_class!r} is not one of {class_names}")
        return class_names.index(self.negative_class)


# ---- calibration error --------------------------------------------------------------------------------------
def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    return np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)


def reliability_table(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """One row per equal-width confidence bin: ``lo, hi, count, confidence, accuracy`` (NaN in empty bins)."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    conf, correct = probs.max(1), (probs.argmax(1) == y_true).astype(float)
    idx = _bin_index(conf, n_bins)
    rows = []
    for k in range(n_bins):
        sel = idx == k
        rows.append({"lo": k / n_bins, "hi": (k + 1) / n_bins, "count": int(sel.sum()),
                     "confidence": float(conf[sel].mean()) if sel.any() else float("nan"),
                     "accuracy": float(correct[sel].mean()) if sel.any() else float("nan")})
    return pd.DataFrame(rows)


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """Top-label ECE with equal-width bins (see the module docstring)."""
    table = reliability_table(y_true, probs, n_bins)
    filled = table[table["count"] > 0]
    n = filled["count"].sum()
    if n == 0:
        return float("nan")
    return float((filled["count"] / n * (filled["accuracy"] - filled["confidence"]).abs()).sum())


def plot_reliability(tables: dict[str, pd.DataFrame], path: str | Path, title: str) -> Path:
    """Reliability diagram: accuracy vs mean confidence per bin, one line per table (e.g. raw / calibrated)."""
    from slidemil.evaluation.plots import plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    for name, t in tables.items():
        t = t[t["count"] > 0]
        ax.plot(t["confidence"], t["accuracy"], "o-", label=name)
    ax.set(xlabel="confidence (top-class probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


# ---- temperature scaling ------------------------------------------------------------------------------------
def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) row-wise; T = 1 returns ``probs`` as they are (old bundles serve what they served)."""
    probs = np.asarray(probs, dtype=np.float64)
    if temperature == 1.0:
        return probs.copy()
    z = np.log(np.clip(probs, EPS, 1.0)) / float(temperature)
    z -= z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def nll(y_true: np.ndarray, probs: np.ndarray) -> float:
    p = np.asarray(probs, dtype=float)[np.arange(len(y_true)), np.asarray(y_true, dtype=int)]
    return float(-np.mean(np.log(np.clip(p, EPS, 1.0))))


def fit_temperature(y_true: np.ndarray, probs: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The T in ``bounds`` minimising the NLL of ``apply_temperature(probs, T)`` (fit on validation only).

    Separable validation sets push T to the lower bound (sharper is always better there): the bounds are the
    guard, and the caller records the fitted value.
    """
    from scipy.optimize import minimize_scalar

    y_true = np.asarray(y_true, dtype=int)
    if len(y_true) == 0:
        raise ValueError("cannot fit a temperature on zero slides")
    res = minimize_scalar(lambda log_t: nll(y_true, apply_temperature(probs, float(np.exp(log_t)))),
                          bounds=(float(np.log(bounds[0])), float(np.log(bounds[1]))), method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))


# ---- operating point ----------------------------------------------------------------------------------------
def disease_score(probs: np.ndarray, negative_index: int = 0) -> np.ndarray:
    """The score thresholded at the operating point: 1 - p(negative class) (binary: p of the other class)."""
    return 1.0 - np.asarray(probs, dtype=float)[:, negative_index]


def sensitivity_specificity(y_true: np.ndarray, probs: np.ndarray, threshold: float,
                            negative_index: int = 0) -> dict[str, float | None]:
    """Disease (any non-negative class) called when the score >= threshold."""
    y_true = np.asarray(y_true, dtype=int)
    pos = y_true != negative_index
    called = disease_score(probs, negative_index) >= threshold
    return {"sensitivity": float(called[pos].mean()) if pos.any() else None,
            "specificity": float((~called[~pos]).mean()) if (~pos).any() else None,
            "n_positive": int(pos.sum()), "n_negative": int((~pos).sum())}


def choose_threshold(y_true: np.ndarray, probs: np.ndarray, *, rule: str = "youden", target_sensitivity: float = 0.9,
                     negative_index: int = 0) -> float:
    """The operating threshold on validation predictions (see the module docstring); 0.5 when validation has
    only one of disease / negative (nothing to choose from)."""
    y_true = np.asarray(y_true, dtype=int)
    pos = y_true != negative_index
    if pos.all() or not pos.any():
        return 0.5
    s = disease_score(probs, negative_index)
    u = np.unique(s)
    candidates = np.concatenate([[0.0], (u[:-1] + u[1:]) / 2.0, [np.nextafter(1.0, 2.0)]])
    sens = np.array([(s[pos] >= t).mean() for t in candidates])
    spec = np.array([(s[~pos] < t).mean() for t in candidates])
    if rule == "youden":
        j = sens + spec - 1.0
        best = np.flatnonzero(np.isclose(j, j.max()))
    elif rule == "sensitivity":
        ok = np.flatnonzero(sens >= target_sensitivity - 1e-12)
        best = ok[[int(np.argmax(candidates[ok]))]]
    else:
        raise ValueError(f"unknown operating-point rule {rule!r} (youden, sensitivity)")
    # ties (a range of equally good thresholds): the one nearest 0.5, the untuned default
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


# ---- what a fold's bundle stores ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FittedCalibration:
    temperature: float
    threshold: float
    rule: str
    target_sensitivity: float | None
    negative_class: str
    n_val: int
    val_nll_before: float
    val_nll_after: float

    def to_dict(self) -> dict:
        return asdict(self)


def fit_calibration(y_val: np.ndarray, probs_val: np.ndarray, class_names: list[str],
                    cfg: CalibrationConfig) -> FittedCalibration:
    """Temperature, then the threshold on the *calibrated* validation probabilities (what serving returns)."""
    neg = cfg.negative_index(class_names)
    t = fit_temperature(y_val, probs_val, cfg.temperature_bounds) if cfg.temperature else 1.0
    calibrated = apply_temperature(probs_val, t)
    thr = choose_threshold(y_val, calibrated, rule=cfg.rule, target_sensitivity=cfg.target_sensitivity,
                           negative_index=neg)
    return FittedCalibration(round(t, 6), round(thr, 6), cfg.rule,
                             cfg.target_sensitivity if cfg.rule == "sensitivity" else None, class_names[neg],
                             int(len(y_val)), round(nll(y_val, probs_val), 6), round(nll(y_val, calibrated), 6))
