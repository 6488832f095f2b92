"""ABMIL baseline: gated-attention pooling, no instance clustering (methods.md section A, "Baselines").

It is CLAM-SB without the instance heads, which isolates what the clustering constraint adds.
(SAM-MIL's backbone in section D uses a plain, non-gated scorer; that model lives in its own module.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slidemil.models.attention import GatedAttention
from slidemil.models.base import MILModel, MILOutput, init_linear_weights
from slidemil.models.config import MILConfig


class ABMIL(MILModel):
    """fc -> gated attention (1 branch) -> z = sum_k A_k h'_k -> Linear(L -> C)."""

    def __init__(self, config: MILConfig) -> None:
        super().__init__(config)
        self.attention = GatedAttention(config.hidden_dim, config.attention_dim, 1, config.dropout)
        self.classifier = nn.Linear(config.hidden_dim, config.n_classes)
        init_linear_weights(self)

    def forward(
        self, features: Tensor, label: Tensor | int | None = None, instance_eval: bool = False
    ) -> MILOutput:
        """``label`` and ``instance_eval`` are accepted for the common contract and unused."""
        h = self.fc(self.as_bag(features))
        raw = self.attention(h)[0]  # [N]
        attention = torch.softmax(raw, dim=0)
        logits = self.classifier(attention @ h)
        return MILOutput(
            logits=logits, probs=torch.softmax(logits, dim=0), attention=attention, attention_raw=raw
        )
