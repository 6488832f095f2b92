"""CLAM: clustering-constrained attention MIL, single- and multi-branch (methods.md section A).

On top of gated-attention pooling, C binary *instance heads* are trained on the tiles the attention itself
ranks highest / lowest (pseudo-labels), which pushes the attention to separate evidence from background
using only slide labels.

Small bags. The paper samples k = 8 tiles per side; methods.md says to clamp k to the bag. For the true
class we additionally keep the top and bottom sets *disjoint*: with N tiles, k_neg = min(k, N // 2) bottom
tiles get label 0 and k_pos = min(k, N - k_neg) top tiles get label 1. For N >= 2k this is exactly the
paper's k/k; for a smaller bag no tile receives both labels (which would only pull its head towards 0.5
and carry no signal), the odd tile goes to the positive side, and N = 1 gives one positive and no
negative. Out-of-class terms (subtyping) take the top min(k, N) tiles, which cannot overlap anything.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slidemil.models.attention import GatedAttention
from slidemil.models.base import MILModel, MILOutput, init_linear_weights, label_index
from slidemil.models.config import ClamConfig
from slidemil.models.losses import SmoothTop1SVM


def select_pseudo_labels(scores: Tensor, k: int, in_class: bool) -> tuple[Tensor, Tensor]:
    """Pick the tiles one instance head is trained on and their pseudo-labels.

    Args:
        scores: [N] attention (or raw scores: only the ranking matters) of the branch for this head.
        k: tiles per side (``k_sample``), clamped to the bag as described in the module docstring.
        in_class: True for the slide's own class (top -> 1, bottom -> 0), False for another class in
            subtyping mode (top -> 0).

    Returns:
        (indices [M] into the bag, labels [M] int64), positives first. Ties are broken by tile order.
    """
    if scores.ndim != 1 or scores.numel() == 0:
        raise ValueError(f"scores must be a non-empty [N] vector, got shape {tuple(scores.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = scores.numel()
    order = torch.argsort(scores.detach(), descending=True, stable=True)
    if not in_class:
        idx = order[: min(k, n)]
        return idx, torch.zeros(idx.numel(), dtype=torch.long, device=scores.device)
    k_neg = min(k, n // 2)
    k_pos = min(k, n - k_neg)
    idx = torch.cat([order[:k_pos], order[n - k_neg :]])
    labels = torch.cat(
        [
            torch.ones(k_pos, dtype=torch.long, device=scores.device),
            torch.zeros(k_neg, dtype=torch.long, device=scores.device),
        ]
    )
    return idx, labels


class _Clam(MILModel):
    """Shared CLAM machinery; subclasses choose the number of attention branches and the bag classifier."""

    def __init__(self, config: ClamConfig, n_branches: int) -> None:
        super().__init__(config)
        self.attention = GatedAttention(config.hidden_dim, config.attention_dim, n_branches, config.dropout)
        self.instance_classifiers = nn.ModuleList(
            nn.Linear(config.hidden_dim, 2) for _ in range(config.n_classes)
        )
        self.instance_loss_fn: nn.Module = (
            SmoothTop1SVM(alpha=config.svm_alpha, tau=config.svm_tau)
            if config.inst_loss == "svm"
            else nn.CrossEntropyLoss()
        )

    def _classify(self, attention: Tensor, h: Tensor) -> Tensor:
        """Slide logits [C] from attention [branches, N] and tile embeddings [N, L]."""
        raise NotImplementedError

    @property
    def multi_branch(self) -> bool:
        return self.attention.n_branches > 1

    def _branch(self, attention: Tensor, class_index: int) -> Tensor:
        """The attention row that ranks tiles for ``class_index``: its own branch (MB) or the only one (SB)."""
        return attention[class_index] if self.multi_branch else attention[0]

    def forward(
        self, features: Tensor, label: Tensor | int | None = None, instance_eval: bool = False
    ) -> MILOutput:
        h = self.fc(self.as_bag(features))  # [N, L]
        raw = self.attention(h)  # [branches, N]
        attention = torch.softmax(raw, dim=1)
        logits = self._classify(attention, h)
        out = MILOutput(
            logits=logits,
            probs=torch.softmax(logits, dim=0),
            attention=attention if self.multi_branch else attention[0],
            attention_raw=raw if self.multi_branch else raw[0],
        )
        if instance_eval:
            if label is None:
                raise ValueError("instance_eval needs the slide label (pseudo-labels come from it)")
            self._instance_clustering(out, h, attention, label_index(label, self.n_classes))
        return out

    def _instance_clustering(self, out: MILOutput, h: Tensor, attention: Tensor, y: int) -> None:
        """Fill the instance loss, averaged over the heads used (own class, plus others when subtyping)."""
        losses, targets, preds = [], [], []
        others = [c for c in range(self.n_classes) if c != y] if self.config.subtyping else []
        for c in [y, *others]:  # the true class first, so instance_targets starts with its head's labels
            head = self.instance_classifiers[c]
            idx, labels = select_pseudo_labels(
                self._branch(attention, c), self.config.k_sample, in_class=c == y
            )
            inst_logits = head(h[idx])
            losses.append(self.instance_loss_fn(inst_logits, labels))
            targets.append(labels)
            preds.append(inst_logits.argmax(dim=1))
        out.instance_loss = torch.stack(losses).mean()
        out.instance_targets = torch.cat(targets)
        out.instance_preds = torch.cat(preds)

    def loss(self, output: MILOutput, label: Tensor | int) -> tuple[Tensor, dict[str, Tensor]]:
        """L = w * CE + (1 - w) * L_inst; without an instance loss (``instance_eval`` off) just the bag CE."""
        bag = self.bag_loss(output, label)
        if output.instance_loss is None:
            return bag, {"bag": bag.detach(), "total": bag.detach()}
        w = self.config.bag_weight
        total = w * bag + (1.0 - w) * output.instance_loss
        return total, {
            "bag": bag.detach(),
            "instance": output.instance_loss.detach(),
            "total": total.detach(),
        }


class ClamSB(_Clam):
    """Single attention branch shared by all classes; z = sum_k A_k h'_k; logits = Linear(L -> C)(z)."""

    def __init__(self, config: ClamConfig) -> None:
        super().__init__(config, n_branches=1)
        self.classifier = nn.Linear(config.hidden_dim, config.n_classes)
        init_linear_weights(self)

    def _classify(self, attention: Tensor, h: Tensor) -> Tensor:
        return self.classifier(attention[0] @ h)


class ClamMB(_Clam):
    """One attention branch and one independent Linear(L -> 1) per class: logit_c = f_c(sum_k A_ck h'_k).

    The per-class heads are separate modules on purpose (one upstream release shared one head, a bug).
    """

    def __init__(self, config: ClamConfig) -> None:
        super().__init__(config, n_branches=config.n_classes)
        self.classifiers = nn.ModuleList(nn.Linear(config.hidden_dim, 1) for _ in range(config.n_classes))
        init_linear_weights(self)

    def _classify(self, attention: Tensor, h: Tensor) -> Tensor:
        slide_vectors = attention @ h  # [C, L]
        return torch.cat([head(slide_vectors[c]) for c, head in enumerate(self.classifiers)])
