"""The contract every slide-level MIL model honours, so training, evaluation, heatmaps and serving can treat
CLAM, ABMIL and the pooling baselines alike.

One bag (one slide) per call: ``forward(features [N, d] or [1, N, d], label=None, instance_eval=False)``
returns a :class:`MILOutput`; ``loss(output, label)`` returns ``(total, parts)``; ``tile_scores(output, c)``
returns the per-tile score a heatmap paints for class c.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slidemil.models.config import MILConfig


@dataclass
class MILOutput:
    """What a MIL model returns for one bag.

    Attributes:
        logits: [C] slide logits.
        probs: [C] softmax of ``logits``.
        attention: normalised attention, [N] (single branch) or [C, N] (CLAM-MB, one row per class);
            uniform 1/N for the pooling baselines. Each branch sums to 1.
        attention_raw: pre-softmax scores, same shape as ``attention``; None for the pooling baselines.
        instance_loss: scalar instance-clustering loss (CLAM with ``instance_eval``), else None.
        instance_targets: pseudo-labels used by that loss (concatenated over the heads used), else None.
        instance_preds: the instance heads' argmax on the same tiles (for an instance accuracy), else None.
        contributions: [C, N] additive per-tile contribution to each logit (pooling baselines:
            ``logits = bias + contributions.sum(1)``), else None. Detached: for interpretation only.
    """

    logits: Tensor
    probs: Tensor
    attention: Tensor
    attention_raw: Tensor | None = None
    instance_loss: Tensor | None = None
    instance_targets: Tensor | None = None
    instance_preds: Tensor | None = None
    contributions: Tensor | None = None

    @property
    def prediction(self) -> int:
        """Index of the most probable class."""
        return int(self.logits.argmax())


def init_linear_weights(module: nn.Module) -> None:
    """Xavier-normal weights and zero biases for every Linear (CLAM's initialisation): keeps the activation
    scale roughly constant through the fc/attention stack, and zero biases make an untrained attention
    start close to uniform instead of favouring arbitrary tiles."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def label_index(label: Tensor | int, n_classes: int) -> int:
    """One slide label as a Python int, checked against the number of classes."""
    if isinstance(label, Tensor):
        if label.numel() != 1:
            raise ValueError(f"one label per bag expected, got shape {tuple(label.shape)}")
        value = int(label.reshape(()).item())
    else:
        value = int(label)
    if not 0 <= value < n_classes:
        raise ValueError(f"label {value} out of range for {n_classes} classes")
    return value


class MILModel(nn.Module):
    """Base class: bag shape handling, bag cross-entropy loss and the heatmap score accessor."""

    config: MILConfig

    def __init__(self, config: MILConfig) -> None:
        super().__init__()
        self.config = config
        self.n_classes = config.n_classes
        # Shared first layer of every model: fc + ReLU + dropout, d -> L (methods.md section A).
        # per-dimension input standardisation (identity until set_feature_stats); encoders differ wildly in
        # feature scale, and unscaled features stall attention training
        self.register_buffer("feature_mean", torch.zeros(config.in_dim))
        self.register_buffer("feature_std", torch.ones(config.in_dim))
        self.fc = nn.Sequential(
            nn.Linear(config.in_dim, config.hidden_dim), nn.ReLU(), nn.Dropout(config.dropout)
        )

    def as_bag(self, features: Tensor) -> Tensor:
        """[N, d] or [1, N, d] -> [N, d] in the parameters' dtype; readable errors for anything else."""
        if features.ndim == 3:
            if features.shape[0] != 1:
                raise ValueError(f"one bag per step: got a batch of {features.shape[0]} bags")
            features = features[0]
        if features.ndim != 2:
            raise ValueError(f"bag features must be [N, d] or [1, N, d], got shape {tuple(features.shape)}")
        if features.shape[0] == 0:
            raise ValueError("empty bag: a slide with 0 tiles cannot be classified")
        if features.shape[1] != self.config.in_dim:
            raise ValueError(f"feature dim {features.shape[1]} != config.in_dim {self.config.in_dim}")
        dtype = self.fc[0].weight.dtype
        features = features if features.dtype == dtype else features.to(dtype)
        return (features - self.feature_mean) / self.feature_std

    def set_feature_stats(self, mean: Tensor, std: Tensor) -> None:
        """Standardise inputs with training-set statistics. Stored as buffers, so they travel with the weights
        (in checkpoints and bundles) and inference standardises exactly as training did."""
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=self.feature_mean.dtype))
        self.feature_std.copy_(torch.as_tensor(std, dtype=self.feature_std.dtype).clamp_min(1e-6))

    def bag_loss(self, output: MILOutput, label: Tensor | int) -> Tensor:
        target = torch.tensor([label_index(label, self.n_classes)], device=output.logits.device)
        return F.cross_entropy(output.logits.unsqueeze(0), target)

    def loss(self, output: MILOutput, label: Tensor | int) -> tuple[Tensor, dict[str, Tensor]]:
        """Bag cross-entropy; CLAM overrides this to add the instance term. Parts are detached."""
        bag = self.bag_loss(output, label)
        return bag, {"bag": bag.detach(), "total": bag.detach()}

    def tile_scores(self, output: MILOutput, class_index: int) -> Tensor:
        """[N] raw attention to paint for class ``class_index`` (single-branch models: their one branch)."""
        label_index(class_index, self.n_classes)
        if output.attention_raw is None:
            raise ValueError(f"{type(self).__name__} has no attention scores")
        raw = output.attention_raw
        return raw[class_index] if raw.ndim == 2 else raw
