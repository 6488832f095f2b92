"""Smooth top-1 SVM loss, CLAM's instance-clustering loss (methods.md section A).

For logits x in R^C, label y, margin alpha and temperature tau, write the *augmented scores*

    u_j = x_j + alpha * [j != y] - x_y          (so u_y = 0)

The hard multiclass hinge is  H = max_j u_j  (>= 0), and the smooth loss replaces the max by a
temperature-scaled log-sum-exp:

    S = tau * log sum_j exp(u_j / tau).

Why it is close to the hinge: with m = max_j u_j and g = (top-1 minus top-2 of u) the gap,

    S - H = tau * log(1 + sum_{j != argmax} exp((u_j - m) / tau)),   each of the C-1 terms <= exp(-g / tau),

hence  tau * log(1 + exp(-g/tau))  <=  S - H  <=  tau * log(1 + (C - 1) * exp(-g / tau)).
So S is always strictly above the hinge (it is smooth everywhere, with non-zero gradient on every logit), and
once g >= tau * ln(1000) the excess is at most  tau * ln(1 + (C - 1) / 1000)  (9.995e-4 for the binary
instance heads with tau = 1): :func:`hinge_tolerance`. We never switch to the hard branch: log-sum-exp is
already numerically stable and the smooth value is within that tolerance anyway.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

Reduction = Literal["mean", "sum", "none"]


def _augmented_scores(x: Tensor, y: Tensor, alpha: float) -> Tensor:
    """u_j = x_j + alpha*[j != y] - x_y, shape [B, C]."""
    if x.ndim != 2:
        raise ValueError(f"logits must be [batch, classes], got shape {tuple(x.shape)}")
    y = y.reshape(-1).long()
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} logit rows but {y.shape[0]} labels")
    margin = torch.full_like(x, alpha)
    margin.scatter_(1, y[:, None], 0.0)
    return x + margin - x.gather(1, y[:, None])


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def smooth_top1_svm(
    x: Tensor, y: Tensor, alpha: float = 1.0, tau: float = 1.0, reduction: Reduction = "mean"
) -> Tensor:
    """tau * logsumexp_j((x_j + alpha*[j != y] - x_y) / tau), averaged over the batch by default."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    u = _augmented_scores(x, y, alpha)
    return _reduce(tau * torch.logsumexp(u / tau, dim=1), reduction)


def hard_top1_hinge(x: Tensor, y: Tensor, alpha: float = 1.0, reduction: Reduction = "mean") -> Tensor:
    """max_j(x_j + alpha*[j != y]) - x_y: the tau -> 0 limit of :func:`smooth_top1_svm`."""
    return _reduce(_augmented_scores(x, y, alpha).amax(dim=1), reduction)


def hinge_tolerance(n_classes: int, tau: float = 1.0, gap_factor: float = 1000.0) -> float:
    """Upper bound of smooth - hard when the augmented top-1/top-2 gap is >= tau * ln(gap_factor):
    tau * ln(1 + (C - 1) / gap_factor) (derivation in the module docstring)."""
    return tau * math.log1p((n_classes - 1) / gap_factor)


class SmoothTop1SVM(nn.Module):
    """Smooth multiclass top-1 SVM (Berrada et al. 2018 smoothing) as used by CLAM's instance heads.

    Takes logits [B, C] and integer labels [B]; returns the batch mean (``reduction="mean"``).
    """

    def __init__(self, alpha: float = 1.0, tau: float = 1.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.tau = float(tau)
        self.reduction: Reduction = reduction

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return smooth_top1_svm(x, y, self.alpha, self.tau, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, tau={self.tau}, reduction={self.reduction!r}"
