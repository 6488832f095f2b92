"""Mean- and max-pooling MIL baselines (methods.md section A, "Baselines").

They answer "does learned attention help at all?": same fc layer, but a fixed aggregator. They have no
attention, so ``MILOutput.attention`` is uniform 1/N and the heatmap score is instead each tile's exact
additive contribution to the chosen logit (``MILOutput.contributions``):

- mean: logit_c = b_c + sum_k (1/N) W_c h'_k, so tile k contributes W_c h'_k / N;
- max:  logit_c = b_c + sum_j W_cj max_k h'_kj, so tile k contributes sum of W_cj z_j over the feature
  dimensions j where it is the arg-max.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slidemil.models.base import MILModel, MILOutput, init_linear_weights, label_index
from slidemil.models.config import MILConfig


class _PoolingMIL(MILModel):
    def __init__(self, config: MILConfig) -> None:
        super().__init__(config)
        self.classifier = nn.Linear(config.hidden_dim, config.n_classes)
        init_linear_weights(self)

    def _pool(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Return the slide vector z [L] and the per-tile contributions to W z, [C, N]."""
        raise NotImplementedError

    def forward(
        self, features: Tensor, label: Tensor | int | None = None, instance_eval: bool = False
    ) -> MILOutput:
        """``label`` and ``instance_eval`` are accepted for the common contract and unused."""
        h = self.fc(self.as_bag(features))
        z, contributions = self._pool(h)
        logits = self.classifier(z)
        n = h.shape[0]
        uniform = torch.full((n,), 1.0 / n, dtype=h.dtype, device=h.device)
        return MILOutput(
            logits=logits,
            probs=torch.softmax(logits, dim=0),
            attention=uniform,
            contributions=contributions.detach(),
        )

    def tile_scores(self, output: MILOutput, class_index: int) -> Tensor:
        """[N] each tile's additive contribution to logit ``class_index`` (no attention to show)."""
        label_index(class_index, self.n_classes)
        assert output.contributions is not None
        return output.contributions[class_index]


class MeanPoolMIL(_PoolingMIL):
    """fc -> mean over tiles -> Linear(L -> C)."""

    def _pool(self, h: Tensor) -> tuple[Tensor, Tensor]:
        per_tile = (h @ self.classifier.weight.T).T / h.shape[0]  # [C, N]
        return h.mean(dim=0), per_tile


class MaxPoolMIL(_PoolingMIL):
    """fc -> element-wise max over tiles -> Linear(L -> C)."""

    def _pool(self, h: Tensor) -> tuple[Tensor, Tensor]:
        z, winner = h.max(dim=0)  # [L], index of the tile holding each feature's max
        weighted = self.classifier.weight * z  # [C, L]
        per_tile = torch.zeros(self.n_classes, h.shape[0], dtype=h.dtype, device=h.device)
        per_tile.scatter_add_(1, winner.expand(self.n_classes, -1), weighted)
        return z, per_tile
