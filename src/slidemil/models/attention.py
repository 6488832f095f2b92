"""Gated attention scorer (Ilse et al. 2018, as used by CLAM; methods.md section A).

The tanh path says *what* a tile looks like, the sigmoid path gates *how much* of it matters; the product
lets the scorer express "relevant only if" without saturating the way a single tanh does.
"""

from __future__ import annotations

from torch import Tensor, nn


class GatedAttention(nn.Module):
    """Raw (pre-softmax) attention scores s = W_c(tanh(W_a h) * sigmoid(W_b h)).

    Dropout is applied on both paths after their non-linearities. ``n_branches`` = 1 for CLAM-SB / ABMIL,
    C for CLAM-MB (one score per class per tile).

    Input h: [N, in_dim]. Output: raw scores [n_branches, N] (the softmax over tiles is the caller's job,
    because heatmaps need the raw scores).
    """

    def __init__(self, in_dim: int = 512, hidden_dim: int = 256, n_branches: int = 1, dropout: float = 0.25):
        super().__init__()
        self.path_a = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Dropout(dropout))
        self.path_b = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.score = nn.Linear(hidden_dim, n_branches)

    @property
    def n_branches(self) -> int:
        return self.score.out_features

    def forward(self, h: Tensor) -> Tensor:
        if h.ndim != 2:
            raise ValueError(f"GatedAttention expects [N, dim] tile embeddings, got shape {tuple(h.shape)}")
        return self.score(self.path_a(h) * self.path_b(h)).transpose(0, 1)
