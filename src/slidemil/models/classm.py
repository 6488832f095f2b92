"""The CLASS-M network: two ResNet-18 encoders on 1-channel views (H and E), one linear classifier on the
mean of their features (methods.md section C; Zhang et al., MedIA).

Why the 1-channel conv1 is the *sum* of the RGB kernels: an RGB-pretrained filter applied to a grey image
replicated in three channels gives exactly the summed kernel applied to one channel, so pretrained weights keep
their response. Weights come through :func:`slidemil.encoders.build_encoder` (random under a seed, ImageNet
from the local caches - which fails fast and clearly offline - or a pipeline-trained checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from slidemil.utils.config import StrictConfig

VIEWS = ("he", "rg", "rb")  # H/E from stain separation; or two raw RGB channels (the "without stain separation" ablation)
OPTIMIZERS = ("rmsprop", "adam")


@dataclass(frozen=True)
class ClassMConfig(StrictConfig):
    """Every CLASS-M constant with the article's default (methods.md section C).

    Attributes:
        n_classes: tile classes C (from the data).
        encoder: backbone name in the encoder registry (ResNet-18, 512-d).
        weights: "random", "random:seed=N", "imagenet" (local cache only when offline) or a checkpoint path.
        seed: seed of the random initialisation.
        feature_dim: encoder output size (512 for ResNet-18).
        views: "he" (stain separation, the method) or "rg" / "rb" (two RGB channels as the views, ablation).
        input_px: side of the tiles the encoders read (the article crops 256).
        crop_pad: reflect padding before the random crop back to ``input_px`` (translation augmentation).
        channel_mean, channel_std: per-channel normalisation of each 8-bit view after /255.
        color_jitter: brightness / contrast / saturation jitter on RGB before separation (0.1; 0 = no RGB aug).
        lambda_c: weight of the H/E triplet loss (0.1 with a batch-mean loss as in the seed article; 0 = no L_c).
        margin: triplet margin m (37).
        k_augment: augmentations per unlabelled tile averaged into its pseudo-label (K = 2).
        temperature: sharpening temperature T (0.5).
        mixup_alpha: Beta(alpha, alpha) of MixUp (0.75; 0 = no MixUp).
        lambda_u: weight of L_u after the ramp (7.5).
        ramp_epochs: epochs of the linear lambda_u ramp (16).
        optimizer: "rmsprop" (the article) or "adam".
        lr: learning rate (1e-4).
        weight_decay: L2 weight decay (0).
        ema_decay: decay of the weight EMA used for validation and test (0.999).
        batch_labelled, batch_unlabelled: tiles per step of each kind (labelled drawn class-balanced).
        epochs: training epochs; steps_per_epoch: optimisation steps per epoch (an "epoch" is a pass over the
            unlabelled pool at most; 0 = len(unlabelled) / batch_unlabelled).
    """

    n_classes: int = 3
    encoder: str = "resnet18"
    weights: str = "random"
    seed: int = 0
    feature_dim: int = 512
    views: str = "he"
    input_px: int = 256
    crop_pad: int = 16
    channel_mean: float = 0.5
    channel_std: float = 0.5
    color_jitter: float = 0.1
    lambda_c: float = 0.1
    margin: float = 37.0
    k_augment: int = 2
    temperature: float = 0.5
    mixup_alpha: float = 0.75
    lambda_u: float = 7.5
    ramp_epochs: float = 16.0
    optimizer: str = "rmsprop"
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    batch_labelled: int = 16
    batch_unlabelled: int = 16
    epochs: int = 100
    steps_per_epoch: int = 0

    def __post_init__(self) -> None:
        if self.views not in VIEWS:
            raise ValueError(f"views must be one of {VIEWS}, got {self.views!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.n_classes < 2:
            raise ValueError(f"CLASS-M needs at least 2 tile classes, got {self.n_classes}")
        if self.k_augment < 1 or self.batch_labelled < 1 or self.batch_unlabelled < 0:
            raise ValueError("k_augment and batch_labelled must be >= 1, batch_unlabelled >= 0")


def one_channel_backbone(config: ClassMConfig, seed: int) -> nn.Module:
    """The encoder's backbone with a 1-channel conv1 whose kernel is the sum of the 3 RGB kernels."""
    from slidemil.encoders import build_encoder

    encoder = build_encoder(config.encoder, weights=config.weights, seed=seed)
    if encoder.feature_dim != config.feature_dim:
        raise ValueError(f"encoder {config.encoder} gives {encoder.feature_dim}-d features, the CLASS-M config "
                         f"says feature_dim={config.feature_dim}")
    backbone = encoder.backbone
    conv = backbone.conv1
    single = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        single.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            single.bias.copy_(conv.bias)
    backbone.conv1 = single
    return backbone


class ClassMNet(nn.Module):
    """f_H = enc_H(H), f_E = enc_E(E), logits = Linear((f_H + f_E) / 2). Inputs are (B, 1, P, P) floats."""

    def __init__(self, config: ClassMConfig):
        super().__init__()
        self.config = config
        # two seeds: random-init encoders that start identical would see the contrastive loss as solved
        self.enc_h = one_channel_backbone(config, config.seed)
        self.enc_e = one_channel_backbone(config, config.seed + 1)
        self.classifier = nn.Linear(config.feature_dim, config.n_classes)

    def forward(self, h: Tensor, e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f_h, f_e = self.enc_h(h), self.enc_e(e)
        return self.classifier((f_h + f_e) / 2), f_h, f_e
