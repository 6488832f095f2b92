"""Multi-scale attention (MSA) bag classifier of Tan et al., SPIE Medical Imaging 2023 (methods.md section B).

No public code exists for this method; this module is the first public implementation, written from the
paper's text alone (docs/methods.md section B records every reading of it that the text leaves open).

Two parts:

* :class:`MultiScaleAttention`, the MSA block: a bottleneck residual around multi-head *cross*-attention.
  The parent feature (coarse scale) is projected to ``d_model`` and is the single query token; its s*s
  children features (fine scale) are projected to ``d_model`` and are the keys and values. The attended
  vector is projected back up to the parent's size and added to the parent feature. Missing children
  (index -1: the tile fell out of the tissue) are masked so they receive exactly 0 attention; a parent with
  no children left gets a zero update (its output is its own feature).
* :class:`MSAModel`: MSA on every distinct parent of a slide once, then each bag of ``bag_size`` parent
  vectors is flattened and classified by the predictor ``Linear(bag_size * d -> 512) -> ReLU -> Linear(512 ->
  512) -> ReLU -> Linear(512 -> C)`` (softmax in the loss).

Why MSA runs per distinct parent and not per bag: the block is a function of one parent and its children
only (no dropout inside it), so computing it once per parent and gathering the results into the bags is
exactly the per-bag computation, 50x cheaper for 50 bags that redraw the same parents.

Heads: the paper states d_model = 2048, 4 heads and d_k = 128, which is inconsistent with Vaswani et al.'s
d_k = d_model / h (= 512). ``head_dim=None`` (the default) uses d_model / heads; ``head_dim=128`` reproduces
the text's literal numbers, with the 4 x 128 concatenated heads projected back to d_model by W_o.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slidemil.models.base import init_linear_weights
from slidemil.models.config import _check_float, _check_int
from slidemil.utils.config import StrictConfig

#: ways a parent token takes in its children (the ablation of methods.md section B)
FUSIONS = ("msa", "concat", "parent")


@dataclass(frozen=True)
class MSAConfig(StrictConfig):
    """MSA hyper-parameters; defaults are the paper's (methods.md section B) unless marked otherwise.

    Attributes:
        in_dim: child (``tiles``) feature size; set from the data.
        parent_dim: parent (``parents``) feature size; set from the data (equal to ``in_dim`` with one
            shared Siamese encoder, the paper's setting).
        n_classes: number of slide classes; set from the data.
        n_bags: random bags per slide, at training and at inference (50).
        bag_size: parents per bag (100), drawn with replacement when a slide has fewer.
        d_model: width of the attention tokens (2048).
        heads: attention heads (4).
        head_dim: per-head key/query/value width d_k; None = d_model / heads (see the module docstring).
        hidden_dim: width of both predictor layers (512).
        dropout: dropout after each predictor layer; the paper uses none (0.0).
        momentum: SGD momentum; the paper names SGD without momentum (0.0).
        inference_seed: seeds the fixed set of inference bags, so a slide's prediction is reproducible.
        fusion: how a parent token takes in its children: ``msa`` (the MSA block, the method), ``concat`` (the
            parent feature concatenated with its present children's mean feature: the ablation's
            "multi-scale without MSA") or ``parent`` (the parent feature alone: single scale).
    """

    in_dim: int = 1024
    parent_dim: int = 1024
    n_classes: int = 2
    n_bags: int = 50
    bag_size: int = 100
    d_model: int = 2048
    heads: int = 4
    head_dim: int | None = None
    hidden_dim: int = 512
    dropout: float = 0.0
    momentum: float = 0.0
    inference_seed: int = 0
    fusion: str = "msa"

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.fusion not in FUSIONS:
            raise ValueError(f"{name}: fusion must be one of {FUSIONS}, got {self.fusion!r}")
        for key in ("in_dim", "parent_dim", "n_bags", "bag_size", "d_model", "heads", "hidden_dim"):
            _check_int(name, key, getattr(self, key), minimum=1)
        _check_int(name, "n_classes", self.n_classes, minimum=2)
        _check_int(name, "inference_seed", self.inference_seed, minimum=0)
        if self.head_dim is None:
            if self.d_model % self.heads:
                raise ValueError(f"{name}: d_model {self.d_model} is not divisible by heads {self.heads}; "
                                 "set head_dim explicitly")
        else:
            _check_int(name, "head_dim", self.head_dim, minimum=1)
        _check_float(name, "dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        _check_float(name, "momentum", self.momentum, low=0.0, high=1.0, high_open=True)

    @property
    def d_k(self) -> int:
        """Per-head width actually used."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.heads


class MultiScaleAttention(nn.Module):
    """Parent (query) attends over its children (keys / values); returns parent + W_up(attended)."""

    def __init__(self, parent_dim: int, child_dim: int, d_model: int, heads: int, d_k: int) -> None:
        super().__init__()
        self.heads, self.d_k = heads, d_k
        self.query_in = nn.Sequential(nn.Linear(parent_dim, d_model), nn.ReLU())  # bottleneck in: parent
        self.child_in = nn.Sequential(nn.Linear(child_dim, d_model), nn.ReLU())  # bottleneck in: children
        self.w_q = nn.Linear(d_model, heads * d_k)
        self.w_k = nn.Linear(d_model, heads * d_k)
        self.w_v = nn.Linear(d_model, heads * d_k)
        self.w_o = nn.Linear(heads * d_k, d_model)
        self.up = nn.Linear(d_model, parent_dim)  # bottleneck out, added to the parent (residual)

    def forward(self, parents: Tensor, tiles: Tensor, children: Tensor) -> tuple[Tensor, Tensor]:
        """``parents`` [P, dp], ``tiles`` [T, dt], ``children`` [P, S] indices into ``tiles`` (-1 = missing).

        Returns (updated parents [P, dp], attention [P, heads, S]); each head's row sums to 1 over the present
        children, missing children get exactly 0, a parent without children gets an all-zero row.
        """
        n_p, n_s = children.shape
        present = children >= 0  # [P, S]
        q = self.w_q(self.query_in(parents)).view(n_p, self.heads, 1, self.d_k)
        kv = self.child_in(tiles)  # projected once per distinct tile, then gathered per parent
        k = self.w_k(kv)[children.clamp_min(0)].view(n_p, n_s, self.heads, self.d_k).transpose(1, 2)
        v = self.w_v(kv)[children.clamp_min(0)].view(n_p, n_s, self.heads, self.d_k).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)).squeeze(2) / self.d_k ** 0.5  # [P, heads, S]
        scores = scores.masked_fill(~present[:, None, :], float("-inf"))
        has_any = present.any(1)[:, None, None]
        attn = torch.where(has_any, torch.softmax(torch.where(has_any, scores, 0.0), dim=-1), 0.0)
        mixed = (attn.unsqueeze(2) @ v).squeeze(2).reshape(n_p, self.heads * self.d_k)  # [P, heads*d_k]
        update = self.up(self.w_o(mixed)) * has_any[:, :, 0]  # no children left: no fine-scale update
        return parents + update, attn


@dataclass
class MSAOutput:
    """``logits`` [n_bags, C]; ``attention`` [P, heads, S] over each distinct parent's children; ``parents``
    [P, dp] the MSA-updated parent vectors (what the predictor reads)."""

    logits: Tensor
    attention: Tensor
    parents: Tensor

    @property
    def probs(self) -> Tensor:
        return torch.softmax(self.logits, dim=-1)


class MSAModel(nn.Module):
    """MSA block + flatten-MLP predictor over bags of parents (inputs standardised with training statistics)."""

    def __init__(self, config: MSAConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        # per-dimension standardisation of both scales (identity until set_feature_stats), as for the MIL models
        for name, dim in (("tile", c.in_dim), ("parent", c.parent_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))
        if c.fusion == "msa":
            self.msa = MultiScaleAttention(c.parent_dim, c.in_dim, c.d_model, c.heads, c.d_k)
        token_dim = c.parent_dim + (c.in_dim if c.fusion == "concat" else 0)
        self.predictor = nn.Sequential(
            nn.Linear(c.bag_size * token_dim, c.hidden_dim), nn.ReLU(), nn.Dropout(c.dropout),
            nn.Linear(c.hidden_dim, c.hidden_dim), nn.ReLU(), nn.Dropout(c.dropout),
            nn.Linear(c.hidden_dim, c.n_classes),
        )
        init_linear_weights(self)

    def set_feature_stats(self, tiles: tuple[Tensor, Tensor], parents: tuple[Tensor, Tensor]) -> None:
        """Training-set mean / std per scale; buffers, so they travel with the weights into bundles."""
        for name, (mean, std) in (("tile", tiles), ("parent", parents)):
            getattr(self, f"{name}_mean").copy_(torch.as_tensor(mean, dtype=torch.float32))
            getattr(self, f"{name}_std").copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def attend(self, parents: Tensor, tiles: Tensor, children: Tensor) -> tuple[Tensor, Tensor]:
        """Standardise both scales and fuse each distinct parent with its children once (the MSA block; the
        ablation's fusions return all-zero attention)."""
        dtype = self.tile_mean.dtype
        p = (parents.to(dtype) - self.parent_mean) / self.parent_std
        t = (tiles.to(dtype) - self.tile_mean) / self.tile_std
        if self.config.fusion == "msa":
            return self.msa(p, t, children)
        attn = p.new_zeros(children.shape[0], self.config.heads, children.shape[1])
        if self.config.fusion == "parent":
            return p, attn
        present = (children >= 0).to(dtype)
        kids = t[children.clamp_min(0)] * present[..., None]
        mean = kids.sum(1) / present.sum(1, keepdim=True).clamp_min(1.0)  # no children left: zeros
        return torch.cat([p, mean], dim=1), attn

    def classify(self, updated: Tensor, bag_rows: Tensor) -> Tensor:
        """``bag_rows`` [n_bags, bag_size] rows of ``updated`` -> logits [n_bags, C]."""
        if bag_rows.shape[1] != self.config.bag_size:
            raise ValueError(f"bags of {bag_rows.shape[1]} parents, the predictor was built for "
                             f"{self.config.bag_size}")
        return self.predictor(updated[bag_rows].flatten(1))

    def forward(self, parents: Tensor, tiles: Tensor, children: Tensor, bag_rows: Tensor) -> MSAOutput:
        """Distinct parents [P, dp] with children [P, S] into tiles [T, dt]; bags as rows into the parents."""
        updated, attn = self.attend(parents, tiles, children)
        return MSAOutput(self.classify(updated, bag_rows), attn, updated)

    @staticmethod
    def loss(logits: Tensor, label: int) -> Tensor:
        """Cross-entropy of every bag against the slide label, averaged over the bags."""
        return F.cross_entropy(logits, torch.full((logits.shape[0],), int(label), device=logits.device))
