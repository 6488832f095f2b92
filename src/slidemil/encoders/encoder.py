"""The :class:`Encoder` wrapper every builder returns: a backbone with its input, normalisation, weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Encoder(nn.Module):
    """A patch encoder plus everything needed to feed it: input size, normalisation, weights identity.

    ``forward`` takes preprocessed float NCHW and returns (N, feature_dim); :meth:`preprocess` turns a uint8
    NHWC batch (as tiles are read) into that input on whatever device the batch already is.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        name: str,
        weights_id: str,
        feature_dim: int,
        input_px: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: str = "bilinear",
        weights_source: str = "",
    ):
        super().__init__()
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"{name}: interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
        self.backbone = backbone
        self.name = name
        self.weights_id = weights_id
        self.weights_source = weights_source
        self.feature_dim = int(feature_dim)
        self.input_px = int(input_px)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.interpolation = interpolation
        # non-persistent: the state_dict holds only learnt weights, so checkpoints stay plain backbones
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_inv_std", 1.0 / torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def preprocess(self, batch: torch.Tensor,
                   memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float32 (N, 3, input_px, input_px): resize if needed, scale to [0, 1], normalise.

        The whole tile is resized (no centre crop): a tile already is the field of view we want to encode.
        ``memory_format=torch.channels_last`` returns the layout a channels-last encoder wants without a copy
        (NHWC tiles already are channels-last).
        """
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(
                f"{self.name}: expected a (N, H, W, 3) uint8 batch, got shape {tuple(batch.shape)}"
            )
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.input_px, self.input_px):
            x = F.interpolate(
                x,
                size=(self.input_px, self.input_px),
                mode=self.interpolation,
                align_corners=False,
                antialias=True,
            ).clamp_(0.0, 1.0)
        mean = self._mean.to(device=x.device)
        inv_std = self._inv_std.to(device=x.device)
        return x.sub_(mean).mul_(inv_std).contiguous(memory_format=memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    @torch.inference_mode()
    def embed(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        """Features of a uint8 NHWC batch (eval mode, no autograd): ``self(self.preprocess(batch))``."""
        return self(self.preprocess(batch_uint8))

    def describe(self) -> dict[str, Any]:
        """Identity and preprocessing, for HDF5 attributes, run logs and serving bundles."""
        return {
            "encoder": self.name,
            "weights_id": self.weights_id,
            "weights_source": self.weights_source,
            "feature_dim": self.feature_dim,
            "input_px": self.input_px,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weights_id={self.weights_id!r}, feature_dim={self.feature_dim}, input_px={self.input_px}"
