"""SAM-MIL: spatial-context-aware MIL with tissue regions (Fang et al., ACM MM 2024; methods.md section D).

The segment stage groups each slide's tiles into regions (SAM masks, or the offline ``slic`` / ``kmeans``
alternatives) and stores the ``segments`` layer. On top of an ABMIL backbone the method adds:

- **group tokens**: the mean feature of each segment's tiles, appended to every bag, never masked, with no
  coordinates, and never part of a tile score layer;
- **SAM-guided group masking**: in each group a random share r(A) = 0.9 * sigmoid(5e-4 * (A - 5000)) of
  its tiles is dropped from the training bag (A = group area), so large, often non-diagnostic regions do
  not dominate the attention;
- **pseudo-bags**: the slide's tiles split at random into 5 bags with the slide label (plus the group
  tokens), L_pb their mean cross-entropy;
- **spatial consistency**: with attention a over the full bag, for each segment S with >= 2 tiles, every
  member i contributes sqrt(sum_{j in S} (a_i - a_j)^2); L_cons is their mean over all (tile, segment)
  terms, so tiles of one region get similar attention;
- L = CE(masked bag) + 0.5 L_pb + 1000 L_cons; Adam 2e-4, weight decay 1e-5, cosine annealing; selection
  (early stopping, checkpoint, fold choice) on validation AUC.

Where the authors' released code deviates, and why we differ (their repository was read for understanding;
nothing is copied):

- *Loss wiring.* In the released training loop the variable that holds the bag cross-entropy is
  reassigned inside the pseudo-bag loop, so the term weighted as "CE of the masked bag" ends up being the
  last pseudo-bag's cross-entropy, and the masked-bag forward never reaches the loss. We implement the
  paper's equation: CE of the SAM-masked bag + 0.5 * mean pseudo-bag CE + 1000 * L_cons, each term computed
  once, both weights config fields (``group_alpha``, ``consistency_alpha``).
- *Model selection on the test fold.* The released default selects the checkpoint on the test split, which
  makes the reported test AUC optimistic. Here every selection uses the validation split only
  (``monitor = "val_auc"``); the test split is predicted once, with the selected checkpoint.

Choices the paper leaves open, fixed here and documented in methods.md section D, "Implementation":
the sentinel "unsegmented" group is masked by its own area but has no group token and no consistency term
(it is not a region); a tile in several segments is masked when any of them masks it; at least one tile
always stays in the masked bag; L_cons is computed in memory linear in the (tile, segment) memberships with the exact identity
sum_j (a_i - a_j)^2 = |S| ((a_i - mean_S)^2 + var_S), so no |S| x |S| matrix is ever built (50k-tile slides).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slidemil.methods.bag import Bag, SlideData, pseudo_bags, whole_slide_bag
from slidemil.methods.base import LayerSpec, Method, Param, ScoreLayer
from slidemil.methods.mil import feature_statistics
from slidemil.methods.registry import register_method
from slidemil.segmenters import Segments
from slidemil.utils.config import StrictConfig

SEGMENTS = "segments"


@dataclass(frozen=True)
class SamMILConfig(StrictConfig):
    """Every constant of methods.md section D with the paper's default.

    Attributes:
        in_dim: tile feature size d (from the data).
        n_classes: slide classes C (from the data).
        hidden_dim: width of the embedding Linear(d -> 512).
        attention_dim: width of the attention Linear(512 -> 128) ReLU Linear(128 -> 1) (no biases).
        dropout: after the embedding (0.25).
        n_pseudo_bags: random pseudo-bags per training slide (5).
        group_alpha: weight of the pseudo-bag loss (0.5).
        consistency_alpha: weight of the spatial consistency loss (1000).
        mask_max_ratio, mask_slope, mask_area_center: r(A) = max_ratio * sigmoid(slope * (A - center))
            (0.9, 5e-4, 5000; A in segmenter frame pixels).
        cosine_epochs: period of the cosine learning-rate annealing in epochs (the paper's 200 epochs).
    """

    in_dim: int = 1024
    n_classes: int = 2
    hidden_dim: int = 512
    attention_dim: int = 128
    dropout: float = 0.25
    n_pseudo_bags: int = 5
    group_alpha: float = 0.5
    consistency_alpha: float = 1000.0
    mask_max_ratio: float = 0.9
    mask_slope: float = 5e-4
    mask_area_center: float = 5000.0
    cosine_epochs: int = 200

    def __post_init__(self) -> None:
        for name, low in (("in_dim", 1), ("n_classes", 2), ("hidden_dim", 1), ("attention_dim", 1),
                          ("n_pseudo_bags", 1), ("cosine_epochs", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"SamMILConfig.{name} must be an integer >= {low}, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SamMILConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.mask_max_ratio < 1.0:
            raise ValueError(f"SamMILConfig.mask_max_ratio must be in [0, 1), got {self.mask_max_ratio!r}")
        for name in ("group_alpha", "consistency_alpha", "mask_slope"):
            if float(getattr(self, name)) < 0:
                raise ValueError(f"SamMILConfig.{name} must be >= 0, got {getattr(self, name)!r}")


def mask_ratio(area: np.ndarray | float, cfg: SamMILConfig) -> np.ndarray:
    """r(A) = mask_max_ratio * sigmoid(mask_slope * (A - mask_area_center)): the share of a group's tiles
    dropped from a training bag (larger regions lose more)."""
    z = cfg.mask_slope * (np.asarray(area, dtype=np.float64) - cfg.mask_area_center)
    return cfg.mask_max_ratio / (1.0 + np.exp(-z))


def group_mask(segments: Segments, cfg: SamMILConfig, rng: np.random.Generator) -> np.ndarray:
    """(N,) bool, True = tile kept: each group (sentinel included) loses round(r(A) * |group|) random
    members; a tile dropped by any of its groups is dropped; one tile survives if all would go."""
    keep = np.ones(segments.n_tiles, dtype=bool)
    ratios = mask_ratio(segments.group_area, cfg)
    order = np.argsort(segments.pairs[:, 1], kind="stable")
    tiles, groups = segments.pairs[order, 0], segments.pairs[order, 1]
    bounds = np.searchsorted(groups, np.arange(segments.n_groups + 1))
    for g in range(segments.n_groups):
        members = tiles[bounds[g]:bounds[g + 1]]
        k = int(np.round(ratios[g] * members.size))
        if k:
            keep[rng.choice(members, size=k, replace=False)] = False
    if not keep.any():
        keep[rng.integers(segments.n_tiles)] = True
    return keep


def segment_pairs(segments: Segments, min_size: int = 1) -> np.ndarray:
    """(tile, segment) pairs of real segments (the sentinel left out) with at least ``min_size`` tiles."""
    pairs = segments.pairs[segments.pairs[:, 1] != segments.unsegmented]
    sizes = np.bincount(pairs[:, 1], minlength=segments.n_groups)
    return pairs[sizes[pairs[:, 1]] >= min_size]


def group_tokens(features: Tensor, segments: Segments) -> Tensor:
    """(S, d) mean feature of each real segment's tiles, in segment order (empty when there is none)."""
    pairs = torch.from_numpy(segment_pairs(segments))
    n_seg = segments.n_segments
    sums = features.new_zeros((n_seg, features.shape[1]))
    if pairs.numel():
        sums.index_add_(0, pairs[:, 1], features[pairs[:, 0]])
    counts = torch.bincount(pairs[:, 1], minlength=n_seg).clamp_min(1).to(features.dtype) if pairs.numel() \
        else features.new_ones(n_seg)
    return sums / counts[:, None]


def consistency_loss(attention: Tensor, pairs: Tensor) -> Tensor:
    """L_cons = mean over (tile i, segment S) pairs with |S| >= 2 of sqrt(sum_{j in S} (a_i - a_j)^2).

    ``pairs`` (M, 2) index ``attention`` (tiles) and segments. Uses sum_j (a_i - a_j)^2 =
    |S| ((a_i - mean_S)^2 + var_S): memory O(M), never an |S| x |S| matrix, exact up to rounding.
    """
    if pairs.numel() == 0:
        return attention.sum() * 0.0
    tile, seg = pairs[:, 0], pairs[:, 1]
    n_seg = int(seg.max()) + 1
    size = torch.bincount(seg, minlength=n_seg).to(attention.dtype)
    eligible = size[seg] >= 2
    if not bool(eligible.any()):
        return attention.sum() * 0.0
    tile, seg = tile[eligible], seg[eligible]
    a = attention[tile]
    mean = attention.new_zeros(n_seg).index_add_(0, seg, a) / size.clamp_min(1)
    dev = a - mean[seg]
    var = attention.new_zeros(n_seg).index_add_(0, seg, dev * dev) / size.clamp_min(1)
    spread = size[seg] * (dev * dev + var[seg])
    return torch.sqrt(spread.clamp_min(1e-12)).mean()


class SamMILNet(nn.Module):
    """ABMIL backbone of methods.md section D over tile tokens followed by group tokens."""

    def __init__(self, cfg: SamMILConfig):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(cfg.in_dim, cfg.hidden_dim), nn.ReLU(), nn.Dropout(cfg.dropout))
        self.attention = nn.Sequential(nn.Linear(cfg.hidden_dim, cfg.attention_dim, bias=False), nn.ReLU(),
                                       nn.Linear(cfg.attention_dim, 1, bias=False))
        self.classifier = nn.Linear(cfg.hidden_dim, cfg.n_classes)
        self.register_buffer("feature_mean", torch.zeros(cfg.in_dim))
        self.register_buffer("feature_std", torch.ones(cfg.in_dim))

    def set_feature_stats(self, mean: Tensor, std: Tensor) -> None:
        """Training-set standardisation (docs/adr/0003), stored as buffers so bundles carry it."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-6))

    def forward(self, tiles: Tensor, groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(logits (C,), raw attention (N + S,)) of one bag; the first N attention values are the tiles'."""
        x = tiles if groups is None or groups.numel() == 0 else torch.cat([tiles, groups])
        h = self.embed((x - self.feature_mean) / self.feature_std)
        raw = self.attention(h).squeeze(-1)
        pooled = torch.softmax(raw, dim=0) @ h
        return self.classifier(pooled), raw


def _ce(logits: Tensor, label: int) -> Tensor:
    return F.cross_entropy(logits.unsqueeze(0), torch.tensor([label], device=logits.device))


@register_method("sam_mil")
class SamMILMethod(Method):
    description = "SAM-MIL: ABMIL + region group tokens, SAM-guided masking, pseudo-bags, consistency (Fang et al. 2024)"
    config_cls = SamMILConfig
    required_layers = (LayerSpec("tile_set"), LayerSpec("features"), LayerSpec(SEGMENTS))
    search_space = {"dropout": Param("float", 0.0, 0.5), "group_alpha": Param("float", 0.1, 1.0),
                    "consistency_alpha": Param("float", 10.0, 1.0e4, log=True)}
    monitor = "val_auc"
    mode = "max"

    def build_model(self) -> SamMILNet:
        return SamMILNet(self.config)

    def fit_data_statistics(self, model: SamMILNet, slides: Sequence[SlideData]) -> None:
        model.set_feature_stats(*feature_statistics(slides))

    def configure_optimizers(self, model: nn.Module, lr: float, weight_decay: float) -> Any:
        """Adam with cosine annealing over ``cosine_epochs`` (the paper's schedule)."""
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.config.cosine_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ---- bags -----------------------------------------------------------------------------------
    @staticmethod
    def segments(slide: SlideData) -> Segments:
        seg = slide.layers.get(SEGMENTS)
        if not isinstance(seg, Segments):
            raise ValueError(f"{slide.slide_id}: sam_mil needs the `segments` layer (run the segment stage, "
                             "`dvc repro segment`)")
        if seg.n_tiles != slide.n_tiles():
            raise ValueError(f"{slide.slide_id}: segments cover {seg.n_tiles} tiles, the slide has {slide.n_tiles()}")
        return seg

    def bags(self, slide: SlideData, *, training: bool, rng: np.random.Generator | None = None) -> list[Bag]:
        """Inference: one bag of every tile + the group tokens. Training: that bag with a SAM-guided keep
        mask (``masks["tiles"]``), then the pseudo-bags, each with the group tokens."""
        seg = self.segments(slide)
        bag = whole_slide_bag(slide)
        bag.tokens["groups"] = group_tokens(bag.tokens["tiles"], seg)
        bag.groups = torch.from_numpy(seg.dense())
        bag.meta.update(unsegmented=seg.unsegmented, segment_pairs=torch.from_numpy(segment_pairs(seg, 2)))
        if not training:
            return [bag]
        rng = rng if rng is not None else np.random.default_rng()
        bag.masks["tiles"] = torch.from_numpy(group_mask(seg, self.config, rng))
        pbs = pseudo_bags(bag, self.config.n_pseudo_bags, rng)
        for pb in pbs:
            pb.tokens["groups"] = bag.tokens["groups"]
        return [bag, *pbs]

    # ---- losses ---------------------------------------------------------------------------------
    def training_loss(self, model: SamMILNet, bags: list[Bag]) -> tuple[Tensor, dict[str, float]]:
        bag, *pbs = bags
        label = int(bag.label_tensor())
        tiles, groups = bag.tokens["tiles"], bag.tokens["groups"]
        keep = bag.masks["tiles"].to(tiles.device)
        logits, _ = model(tiles[keep], groups)
        ce = _ce(logits, label)
        _, raw = model(tiles, groups)
        attention = torch.softmax(raw, dim=0)[: tiles.shape[0]]
        cons = consistency_loss(attention, bag.meta["segment_pairs"].to(tiles.device))
        pb = torch.stack([_ce(model(p.tokens["tiles"], p.tokens["groups"])[0], label) for p in pbs]).mean() \
            if pbs else ce * 0.0
        loss = ce + self.config.group_alpha * pb + self.config.consistency_alpha * cons
        parts = {"loss": float(loss.detach()), "ce": float(ce.detach()), "pb_loss": float(pb.detach()),
                 "cons_loss": float(cons.detach()), "error": float(int(logits.argmax()) != label),
                 "masked_fraction": float(1.0 - keep.float().mean())}
        return loss, parts

    def evaluate(self, model: SamMILNet, bags: list[Bag]) -> tuple[np.ndarray, float | None]:
        bag = bags[0]
        logits, _ = model(bag.tokens["tiles"], bag.tokens["groups"])
        loss = None if bag.label is None else float(_ce(logits, bag.label))
        return torch.softmax(logits, 0).detach().float().cpu().numpy(), loss

    def explain(self, model: SamMILNet, slide: SlideData, class_index: int,
                class_names: Sequence[str]) -> list[ScoreLayer]:
        """The tiles' raw attention (pre-softmax); group tokens are not tiles and are left out."""
        (bag,) = self.bags(slide, training=False)
        with torch.inference_mode():
            _, raw = model(bag.tokens["tiles"], bag.tokens["groups"])
        values = raw[: bag.tokens["tiles"].shape[0]].float().cpu().numpy()
        return [ScoreLayer("attention", "tiles", values, "attention", class_names[class_index],
                           "raw attention (pre-softmax) of each tile over tiles and region tokens")]
