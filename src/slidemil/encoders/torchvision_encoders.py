"""torchvision encoders: the CLAM default ``resnet50_trunc``, plus ``resnet18`` and ``vgg16``.

Each backbone keeps torchvision's parameter names (``conv1.weight``, ``layer3.5.bn2.running_mean``, ...), so
an untouched torchvision checkpoint loads directly: keys of the parts we cut away (``layer4``, ``fc``,
``classifier``) are ignored, every other key must match exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slidemil.encoders.catalog import register_encoder
from slidemil.encoders.encoder import IMAGENET_MEAN, IMAGENET_STD, Encoder
from slidemil.encoders.weights import (
    EncoderWeightsError,
    WeightsSpec,
    checkpoint_weights_id,
    fetch_torch_hub_file,
    load_checkpoint,
    load_into,
    seeded,
)

INPUT_PX = 224


class ResNetTrunk(nn.Module):
    """A torchvision ResNet's stem and first ``n_stages`` residual stages, then global average pooling."""

    def __init__(self, resnet: nn.Module, n_stages: int):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.n_stages = n_stages
        for i in range(1, n_stages + 1):
            setattr(self, f"layer{i}", getattr(resnet, f"layer{i}"))
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.n_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return torch.flatten(self.pool(x), 1)


class VGGFeatures(nn.Module):
    """VGG convolutional ``features`` followed by global average pooling (not the 25088-d flatten)."""

    def __init__(self, vgg: nn.Module):
        super().__init__()
        self.features = vgg.features
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def _build(
    *,
    name: str,
    spec: WeightsSpec,
    make_full: Callable[[], nn.Module],
    weights_enum: Any,
    default_tag: str,
    cut: Callable[[nn.Module], nn.Module],
    discarded: tuple[str, ...],
    feature_dim: int,
) -> Encoder:
    """Seeded full model -> cut to the backbone -> load pretrained or checkpoint weights into the backbone."""
    with seeded(spec.seed):
        backbone = cut(make_full())
    if spec.kind == "random":
        weights_id, source = f"random:seed={spec.seed}", ""
    elif spec.kind == "imagenet":
        tag = spec.tag or default_tag
        try:
            entry = weights_enum[tag]
        except KeyError:
            options = ", ".join(m.name for m in weights_enum)
            raise EncoderWeightsError(
                f"{name}: unknown pretrained weights {tag!r}; torchvision offers {options}"
            ) from None
        path = fetch_torch_hub_file(entry.url, encoder=name, spec=spec)
        load_into(
            backbone,
            load_checkpoint(path),
            source=f"{name} pretrained file {path}",
            ignore_prefixes=discarded,
        )
        weights_id, source = f"imagenet:{tag}", str(path)
    else:
        assert spec.path is not None
        load_into(
            backbone, load_checkpoint(spec.path), source=f"checkpoint {spec.path}", ignore_prefixes=discarded
        )
        weights_id, source = checkpoint_weights_id(spec.path), str(spec.path.resolve())
    return Encoder(
        backbone,
        name=name,
        weights_id=weights_id,
        weights_source=source,
        feature_dim=feature_dim,
        input_px=INPUT_PX,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )


@register_encoder("resnet50_trunc")
def resnet50_trunc(spec: WeightsSpec) -> Encoder:
    """ResNet-50 cut after layer3 + global average pool: 1024-d, 224 px (CLAM's default; V1 ImageNet weights)."""
    from torchvision.models import ResNet50_Weights, resnet50

    return _build(
        name="resnet50_trunc",
        spec=spec,
        make_full=lambda: resnet50(weights=None),
        weights_enum=ResNet50_Weights,
        default_tag="IMAGENET1K_V1",
        cut=lambda m: ResNetTrunk(m, n_stages=3),
        discarded=("layer4.", "fc."),
        feature_dim=1024,
    )


@register_encoder("resnet18")
def resnet18(spec: WeightsSpec) -> Encoder:
    """ResNet-18 up to the global pool: 512-d, 224 px."""
    from torchvision.models import ResNet18_Weights
    from torchvision.models import resnet18 as tv_resnet18

    return _build(
        name="resnet18",
        spec=spec,
        make_full=lambda: tv_resnet18(weights=None),
        weights_enum=ResNet18_Weights,
        default_tag="IMAGENET1K_V1",
        cut=lambda m: ResNetTrunk(m, n_stages=4),
        discarded=("fc.",),
        feature_dim=512,
    )


@register_encoder("vgg16")
def vgg16(spec: WeightsSpec) -> Encoder:
    """VGG-16 convolutional features + global average pool: 512-d, 224 px."""
    from torchvision.models import VGG16_Weights
    from torchvision.models import vgg16 as tv_vgg16

    return _build(
        name="vgg16",
        spec=spec,
        make_full=lambda: tv_vgg16(weights=None),
        weights_enum=VGG16_Weights,
        default_tag="IMAGENET1K_V1",
        cut=VGGFeatures,
        discarded=("classifier.",),
        feature_dim=512,
    )
