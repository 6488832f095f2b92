"""CLASS-M's training signals as pure functions (methods.md section C; Zhang et al., MedIA).

Every function takes tensors (and, where it draws, the permutation or lambda already drawn), so each can be
checked against a hand-computed case and the training step stays a short composition of them:

    L = L_x + lambda_u(t) * L_u + lambda_c * L_c
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def batchnorm_features(f: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-dimension standardisation over the batch (BatchNorm1d without affine, batch statistics)."""
    return F.batch_norm(f, None, None, training=True, eps=eps)


def he_triplet_loss(f_h: Tensor, f_e: Tensor, margin: float = 37.0, negatives: Tensor | None = None) -> Tensor:
    """Batch-mean H/E triplet loss on BatchNorm'd features.

    For tile i: max(0, ||z_H,i - z_E,i|| - ||z_H,i - z_E,j|| + margin) with j = ``negatives[i]`` a different
    tile of the batch; by default the next one (i + 1 mod B), which is "the next after shuffling" when the
    caller has shuffled the batch. The margin (37) is on the scale of 512-d standardised features, whose
    pairwise distances are about sqrt(2 * 512) = 32.
    """
    if f_h.shape != f_e.shape or f_h.ndim != 2:
        raise ValueError(f"H and E features must both be (B, d), got {tuple(f_h.shape)} and {tuple(f_e.shape)}")
    b = f_h.shape[0]
    if b < 2:
        raise ValueError("the H/E triplet loss needs at least 2 tiles in the batch (a negative partner)")
    if negatives is None:
        negatives = torch.roll(torch.arange(b, device=f_h.device), -1)
    if bool((negatives == torch.arange(b, device=f_h.device)).any()):
        raise ValueError("a tile cannot be its own negative")
    z_h, z_e = batchnorm_features(f_h), batchnorm_features(f_e)
    pos = (z_h - z_e).norm(dim=1)
    neg = (z_h - z_e[negatives]).norm(dim=1)
    return torch.relu(pos - neg + margin).mean()


def sharpen(p: Tensor, temperature: float = 0.5) -> Tensor:
    """p^(1/T) / sum p^(1/T) per row: T < 1 pushes pseudo-labels towards one class."""
    if temperature <= 0:
        raise ValueError(f"sharpening temperature must be > 0, got {temperature}")
    q = p.clamp_min(0) ** (1.0 / temperature)
    return q / q.sum(dim=1, keepdim=True)


def pseudo_labels(prob_views: list[Tensor], temperature: float = 0.5) -> Tensor:
    """Mean of the K augmented views' class probabilities, sharpened; never carries a gradient."""
    with torch.no_grad():
        return sharpen(torch.stack([p.detach() for p in prob_views]).mean(0), temperature)


def mixup_lambda(rng: np.random.Generator, alpha: float = 0.75) -> float:
    """lambda ~ Beta(alpha, alpha), then max(lambda, 1 - lambda): each mix stays closer to its first input."""
    if alpha <= 0:
        return 1.0
    lam = float(rng.beta(alpha, alpha))
    return max(lam, 1.0 - lam)


def mixup(inputs: list[Tensor], targets: Tensor, lam: float, perm: Tensor) -> tuple[list[Tensor], Tensor]:
    """lam * x + (1 - lam) * x[perm] for every input view and the soft targets; ``lam`` is first taken as
    max(lam, 1 - lam), so row i of the result is dominated by row i of the input (the ordering L_x / L_u rely
    on: the first B_x mixed rows are still the labelled ones)."""
    lam = max(float(lam), 1.0 - float(lam))
    mixed = [lam * x + (1.0 - lam) * x[perm] for x in inputs]
    return mixed, lam * targets + (1.0 - lam) * targets[perm]


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """L_x: -sum_c t_c log softmax(logits)_c, mean over the batch (targets are mixed one-hots)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def probability_mse(logits: Tensor, targets: Tensor) -> Tensor:
    """L_u: mean squared error between softmax probabilities and the (mixed, sharpened) targets, averaged
    over every (tile, class) entry, as MixMatch does."""
    return ((F.softmax(logits, dim=1) - targets) ** 2).mean()


def lambda_u_ramp(epoch: float, lambda_u: float = 7.5, ramp_epochs: float = 16.0) -> float:
    """Weight of L_u at (fractional) epoch t: lambda_u * min(1, t / ramp_epochs), 0 at the start."""
    if ramp_epochs <= 0:
        return float(lambda_u)
    return float(lambda_u) * min(1.0, max(0.0, float(epoch)) / float(ramp_epochs))


def ema_decay_at(step: int, decay: float = 0.999) -> float:
    """Decay used at update ``step`` (0-based): min(decay, (1 + step) / (10 + step)), the usual warm-up, so
    the average follows the model in short runs instead of staying at the random initialisation for the
    ~1 / (1 - decay) steps a constant 0.999 needs."""
    return min(float(decay), (1.0 + step) / (10.0 + step))


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float = 0.999) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BatchNorm statistics) are copied."""
    if not 0.0 <= decay < 1.0 or math.isnan(decay):
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.mul_(decay).add_(pm.detach(), alpha=1.0 - decay)
        for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
            be.copy_(bm)
