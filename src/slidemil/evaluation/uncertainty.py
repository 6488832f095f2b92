"""Bootstrap confidence intervals for slide-level metrics (AUC, balanced accuracy, macro F1).

Why bootstrap: the demo's and most pathology cohorts' test sets are small (tens of slides), so a point estimate
alone hides how little it pins down. Resampling is over *slides*, or over *patients* (``case_id``) when some
patient has several slides: slides of one patient are correlated, and resampling them independently would make
the interval too narrow. A drawn patient brings all of its slides. Intervals are percentile intervals of the
bootstrap distribution; replicates where a metric is undefined (AUC with one class drawn) are dropped and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import rankdata

#: the metrics that get intervals (names as in ``slidemil.evaluation.metrics.METRICS``)
CI_METRICS = ("auc", "balanced_accuracy", "macro_f1")

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def fast_macro_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """``slidemil.evaluation.metrics.macro_auc`` by ranks (Mann-Whitney U, ties averaged): the same values,
    fast enough for thousands of resamples."""
    present = np.unique(y)
    if present.size < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return _binary_auc(y == 1, probs[:, 1])
    return float(np.mean([_binary_auc(y == c, probs[:, c]) for c in present]))


def _binary_auc(pos: np.ndarray, score: np.ndarray) -> float:
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def fast_balanced_accuracy(y: np.ndarray, probs: np.ndarray) -> float:
    """sklearn's balanced accuracy: mean recall over the classes present in ``y``."""
    cm = _confusion(y, probs.argmax(1), probs.shape[1])
    support = cm.sum(1)
    return float(np.mean(np.diag(cm)[support > 0] / support[support > 0]))


def fast_macro_f1(y: np.ndarray, probs: np.ndarray) -> float:
    """Macro F1 over the classes that occur (true or predicted): ``slide_metrics``' value whenever every class
    is among the labels, and no free zero for a class a small resample happened not to draw."""
    cm = _confusion(y, probs.argmax(1), probs.shape[1])
    tp = np.diag(cm).astype(float)
    denom = 2 * tp + (cm.sum(0) - tp) + (cm.sum(1) - tp)
    return float(np.mean(2 * tp[denom > 0] / denom[denom > 0]))


METRIC_FNS: dict[str, MetricFn] = {"auc": fast_macro_auc, "balanced_accuracy": fast_balanced_accuracy,
                                   "macro_f1": fast_macro_f1}


@dataclass(frozen=True)
class Interval:
    """A metric on the full set and its bootstrap percentile interval."""

    estimate: float | None
    low: float | None
    high: float | None
    level: float
    n_boot: int
    n_valid: int  # replicates where the metric was defined
    unit: str  # "slide" or "case": what was resampled
    n_units: int

    def to_dict(self, digits: int = 4) -> dict:
        d = asdict(self)
        for k in ("estimate", "low", "high"):
            d[k] = None if d[k] is None else round(float(d[k]), digits)
        return d


def resample_indices(rng: np.random.Generator, groups: np.ndarray | None, n: int) -> np.ndarray:
    """Row indices of one bootstrap replicate: ``n`` slides with replacement, or (``groups`` given) as many
    groups as there are, with replacement, each bringing all of its rows."""
    if groups is None:
        return rng.integers(0, n, size=n)
    _, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
    drawn = rng.integers(0, len(members), size=len(members))
    return np.concatenate([members[g] for g in drawn])


def needs_case_resampling(case_ids: np.ndarray | None) -> bool:
    """True when some patient has several slides (then patients, not slides, are the independent units)."""
    if case_ids is None:
        return False
    _, counts = np.unique(np.asarray(case_ids).astype(str), return_counts=True)
    return bool((counts > 1).any())


def bootstrap_distribution(y_true: np.ndarray, probs: np.ndarray, *, case_ids: np.ndarray | None = None,
                           n_boot: int = 1000, seed: int = 0,
                           metrics: dict[str, MetricFn] | None = None) -> dict[str, np.ndarray]:
    """``n_boot`` values of each metric (NaN where undefined) on seeded resamples; see :func:`bootstrap_cis`."""
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    if len(y_true) != len(probs):
        raise ValueError(f"{len(y_true)} labels but {len(probs)} probability rows")
    metrics = metrics or METRIC_FNS
    groups = np.asarray(case_ids).astype(str) if needs_case_resampling(case_ids) else None
    rng = np.random.default_rng(seed)
    out = {name: np.full(n_boot, np.nan) for name in metrics}
    for b in range(n_boot):
        idx = resample_indices(rng, groups, len(y_true))
        y, p = y_true[idx], probs[idx]
        for name, fn in metrics.items():
            out[name][b] = _defined(fn, y, p)
    return out


def bootstrap_cis(y_true: np.ndarray, probs: np.ndarray, *, case_ids: np.ndarray | None = None,
                  n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                  metrics: dict[str, MetricFn] | None = None) -> dict[str, Interval]:
    """Percentile bootstrap intervals of each metric. ``y_true`` (n,) class indices, ``probs`` (n, C).

    Patients are resampled when ``case_ids`` is given and some patient has several slides, else slides.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    metrics = metrics or METRIC_FNS
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    dist = bootstrap_distribution(y_true, probs, case_ids=case_ids, n_boot=n_boot, seed=seed, metrics=metrics)
    by_case = needs_case_resampling(case_ids)
    n_units = len(np.unique(np.asarray(case_ids).astype(str))) if by_case else len(y_true)
    alpha = (1.0 - level) / 2.0
    out = {}
    for name, fn in metrics.items():
        vals = dist[name][~np.isnan(dist[name])]
        low, high = (np.percentile(vals, [100 * alpha, 100 * (1 - alpha)]) if vals.size else (None, None))
        out[name] = Interval(_none_if_nan(_defined(fn, y_true, probs)), _none_if_nan(low), _none_if_nan(high),
                             level, n_boot, int(vals.size), "case" if by_case else "slide", n_units)
    return out


def _defined(fn: MetricFn, y: np.ndarray, p: np.ndarray) -> float:
    """The metric (NaN where undefined, e.g. AUC with one class drawn)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(fn(y, p))


def _none_if_nan(v) -> float | None:
    return None if v is None or np.isnan(v) else float(v)
