"""The supervised contrastive loss of Stage 1 (methods.md section B.2) and the paper's multi-scale pairs.

No public code exists for this method (Tan et al., SPIE Medical Imaging 2023); slidemil's is the first public
implementation, written from the paper's text.

For an anchor i with positives P(i) and contrast set A(i) (P(i) and the negatives N(i)):

    l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau) )

and the loss is the mean of l_i over the anchors that have positives. With A(i) = every other sample this is
Khosla et al.'s SupCon; the paper restricts the denominator to its pairs (positives and the negatives "from
other classes at the same scale"), which :func:`multiscale_pairs` builds.
"""

from __future__ import annotations

import torch
from torch import Tensor

COARSE, FINE = 0, 1


def supcon_loss(z: Tensor, positives: Tensor, contrast: Tensor | None = None, tau: float = 0.07) -> Tensor:
    """``z`` [M, d] L2-normalised projections; ``positives`` [M, M] bool; ``contrast`` [M, M] bool denominator
    set (None = every other sample). Positives always join the denominator; self-pairs never count.

    Anchors without positives contribute nothing; a batch without any positive pair raises (a sampling bug,
    not a zero loss)."""
    m = z.shape[0]
    eye = torch.eye(m, dtype=torch.bool, device=z.device)
    pos = positives.to(torch.bool) & ~eye
    den = (torch.ones_like(pos) if contrast is None else contrast.to(torch.bool)) | pos
    den = den & ~eye
    logits = (z @ z.T) / tau
    log_den = torch.logsumexp(logits.masked_fill(~den, float("-inf")), dim=1, keepdim=True)
    log_prob = logits - log_den
    n_pos = pos.sum(1)
    anchors = n_pos > 0
    if not bool(anchors.any()):
        raise ValueError("supcon_loss: no anchor has a positive in this batch")
    per_anchor = -(log_prob * pos).sum(1)[anchors] / n_pos[anchors]
    return per_anchor.mean()


def multiscale_pairs(slide: Tensor, scale: Tensor, place: Tensor, label: Tensor,
                     anchor_scales: tuple[int, ...] = (COARSE,)) -> tuple[Tensor, Tensor]:
    """The paper's pairs for a batch of coarse (parent) and fine (child) tiles -> (positives, contrast).

    Per sample: ``slide`` id, ``scale`` (COARSE / FINE), ``place`` (the parent it is or belongs to, unique in
    the batch), ``label`` (slide class). For a coarse anchor: positives are its own children at the fine scale
    and the other coarse tiles of the same slide; negatives are coarse tiles of another class. Only coarse
    tiles are anchors by default, as in the paper ("h_i is the main patch from level alpha"); with FINE in
    ``anchor_scales`` a child is an anchor too, with its parent and the same slide's other children as positives
    and other-class children as negatives.
    """
    same_slide = slide[:, None] == slide[None, :]
    same_scale = scale[:, None] == scale[None, :]
    same_place = place[:, None] == place[None, :]
    other_class = label[:, None] != label[None, :]
    eye = torch.eye(slide.shape[0], dtype=torch.bool, device=slide.device)
    is_anchor = torch.zeros_like(scale, dtype=torch.bool)
    for s in anchor_scales:
        is_anchor |= scale == s
    positives = ((same_place & ~same_scale) | (same_slide & same_scale)) & ~eye & is_anchor[:, None]
    negatives = other_class & same_scale & is_anchor[:, None]
    return positives, positives | negatives
