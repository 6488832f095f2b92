"""CLASS-M: its losses against small hand-computed cases, the two-encoder model, tile training, tile labels
and the registered method (methods.md section C)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from slidemil.models.classm_losses import (
    ema_update,
    he_triplet_loss,
    lambda_u_ramp,
    mixup,
    mixup_lambda,
    probability_mse,
    pseudo_labels,
    sharpen,
    soft_cross_entropy,
)

# BatchNorm of two values a < b gives -1, +1 up to eps: 1 / sqrt(1 + 1e-5)
UNIT = 1.0 / math.sqrt(1.0 + 1e-5)


def test_triplet_loss_hand_computed():
    f = torch.tensor([[0.0], [2.0]])  # z = [-1, +1]
    # same order in H and E: positive distance 0, negative distance 2 -> relu(0 - 2 + m)
    assert he_triplet_loss(f, f.clone(), margin=37.0).item() == pytest.approx(37.0 - 2 * UNIT, abs=1e-5)
    assert he_triplet_loss(f, f.clone(), margin=1.0).item() == 0.0  # margin met: no loss
    # E reversed: positive distance 2, negative 0 -> 2 + m for both tiles (batch mean, not sum)
    assert he_triplet_loss(f, f.flip(0), margin=37.0).item() == pytest.approx(37.0 + 2 * UNIT, abs=1e-5)


def test_triplet_loss_is_scale_free_and_uses_the_given_negatives():
    torch.manual_seed(0)
    f_h, f_e = torch.randn(6, 4), torch.randn(6, 4)
    base = he_triplet_loss(f_h, f_e, margin=3.0)
    assert he_triplet_loss(100 * f_h + 5, 0.5 * f_e - 1, margin=3.0).item() == pytest.approx(base.item(), rel=1e-4)
    neg = torch.tensor([3, 4, 5, 0, 1, 2])
    assert he_triplet_loss(f_h, f_e, margin=3.0, negatives=neg).item() != pytest.approx(base.item())
    with pytest.raises(ValueError, match="own negative"):
        he_triplet_loss(f_h, f_e, negatives=torch.arange(6))
    with pytest.raises(ValueError, match="at least 2"):
        he_triplet_loss(f_h[:1], f_e[:1])


def test_sharpen_and_pseudo_labels():
    got = sharpen(torch.tensor([[0.6, 0.4], [0.5, 0.5]]), 0.5)
    assert got[0].tolist() == pytest.approx([0.36 / 0.52, 0.16 / 0.52])
    assert got[1].tolist() == pytest.approx([0.5, 0.5])
    a = torch.tensor([[0.8, 0.2]], requires_grad=True)
    b = torch.tensor([[0.4, 0.6]], requires_grad=True)
    q = pseudo_labels([a, b], 0.5)  # mean (0.6, 0.4), then sharpened
    assert q[0].tolist() == pytest.approx([0.36 / 0.52, 0.16 / 0.52])
    assert not q.requires_grad
    with pytest.raises(ValueError):
        sharpen(got, 0.0)


def test_mixup_keeps_each_row_closest_to_its_first_input():
    x = torch.tensor([[0.0], [10.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    perm = torch.tensor([1, 0])
    for lam in (0.3, 0.7):  # 0.3 becomes max(0.3, 0.7) = 0.7
        (mixed,), targets = mixup([x], y, lam, perm)
        assert mixed[:, 0].tolist() == pytest.approx([3.0, 7.0])
        assert targets.tolist() == [pytest.approx([0.7, 0.3]), pytest.approx([0.3, 0.7])]
    rng = np.random.default_rng(0)
    draws = [mixup_lambda(rng, 0.75) for _ in range(200)]
    assert min(draws) >= 0.5 and max(draws) <= 1.0
    assert mixup_lambda(rng, 0.0) == 1.0  # alpha 0 = no mixing (the "without MixUp" ablation)


def test_lambda_u_ramp_is_linear_over_16_epochs():
    assert [lambda_u_ramp(t) for t in (0, 4, 8, 16, 40)] == pytest.approx([0.0, 1.875, 3.75, 7.5, 7.5])
    assert lambda_u_ramp(3, ramp_epochs=0) == 7.5


def test_soft_cross_entropy_and_probability_mse():
    logits = torch.zeros(1, 2)
    target = torch.tensor([[1.0, 0.0]])
    assert soft_cross_entropy(logits, target).item() == pytest.approx(math.log(2))
    assert probability_mse(logits, target).item() == pytest.approx(0.25)  # ((0.5)^2 + (0.5)^2) / 2
    # soft targets: CE against (0.5, 0.5) of uniform logits is still log 2
    assert soft_cross_entropy(logits, torch.tensor([[0.5, 0.5]])).item() == pytest.approx(math.log(2))


def test_ema_update():
    model, ema = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.weight.fill_(0.0)
    ema_update(ema, model, 0.9)
    assert ema.weight.item() == pytest.approx(0.1)
    with pytest.raises(ValueError):
        ema_update(ema, model, 1.0)
