"""The Stage-1 network (methods.md section B.2): one backbone shared by both scales plus the paper's projection
head, and the augmentations (flips, right-angle rotations, contrast; never crop-and-scale).

No public code exists for this method (Tan et al., SPIE Medical Imaging 2023); slidemil's is the first public
implementation. "Siamese" here is literal weight sharing: coarse and fine tiles go through the same module in
one batch, which is what sharing the sister networks' parameters amounts to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slidemil.encoders import Encoder


class ProjectionHead(nn.Module):
    """Dense 1024 -> ReLU -> BatchNorm, Dense 1024 -> ReLU -> BatchNorm, Dense 256; L2-normalised output."""

    def __init__(self, in_dim: int, hidden: int = 1024, out_dim: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.BatchNorm1d(hidden),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.BatchNorm1d(hidden),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, h: Tensor) -> Tensor:
        return F.normalize(self.net(h), dim=1)


class SiameseEncoder(nn.Module):
    """``encoder`` (a registered slidemil encoder, trained in place) + :class:`ProjectionHead`.

    ``forward`` takes uint8 NHWC tiles of either scale and returns unit projections; ``input_px`` None feeds
    the encoder's own input size (what the features stage will use), a smaller value trains faster."""

    def __init__(self, encoder: Encoder, head: ProjectionHead, input_px: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.input_px = int(input_px or encoder.input_px)
        self.register_buffer("_mean", torch.tensor(encoder.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(encoder.std).view(1, 3, 1, 1), persistent=False)

    def prepare(self, tiles: Tensor) -> Tensor:
        """uint8 (N, H, W, 3) -> normalised float (N, 3, input_px, input_px), as the encoder preprocesses."""
        x = tiles.permute(0, 3, 1, 2).float().div(255.0)
        if x.shape[-1] != self.input_px or x.shape[-2] != self.input_px:
            x = F.interpolate(x, size=(self.input_px, self.input_px), mode="bilinear", align_corners=False,
                              antialias=True).clamp(0.0, 1.0)
        return (x - self._mean) / self._std

    def forward(self, tiles: Tensor) -> Tensor:
        return self.head(self.encoder(self.prepare(tiles)))


def augment(tiles: Tensor, generator: torch.Generator, contrast: float = 0.2) -> Tensor:
    """Per tile: random horizontal / vertical flip, rotation by k x 90 degrees, contrast factor in
    [1 - contrast, 1 + contrast] around the tile's mean. uint8 NHWC in and out; the field of view and the
    scale never change (no crop-and-scale: scale is the signal)."""
    out = []
    n = tiles.shape[0]
    flips = torch.rand(n, 2, generator=generator) < 0.5
    turns = torch.randint(0, 4, (n,), generator=generator)
    factors = 1.0 + (torch.rand(n, generator=generator) * 2 - 1) * contrast
    for i in range(n):
        t = tiles[i]
        if flips[i, 0]:
            t = t.flip(1)
        if flips[i, 1]:
            t = t.flip(0)
        t = torch.rot90(t, int(turns[i]), dims=(0, 1)).float()
        t = (t - t.mean()) * factors[i] + t.mean()
        out.append(t.round().clamp(0, 255).to(torch.uint8))
    return torch.stack(out)
