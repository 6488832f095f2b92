"""MSA (multi-scale attention) on the method contract: Stage 2 of Tan et al., SPIE Medical Imaging 2023
(methods.md section B).

No public code exists for this method; slidemil's is the first public implementation, written from the
paper's text alone. The model is :mod:`slidemil.models.msa`; this module owns what the contract asks:

* bags: ``n_bags`` random bags of ``bag_size`` parents (``random_parent_bags``), redrawn every training
  step; at inference one fixed set seeded by ``inference_seed``, so a slide's prediction is reproducible
  (a bundle loaded in a fresh process gives the same numbers);
* loss: cross-entropy of every bag against the slide label, averaged over the bags; optimiser SGD;
* slide prediction: the mean bag probability (gives an AUC); the majority vote over the bags is returned
  beside it (``SlidePrediction.votes``);
* explanation: every parent of the slide is scored once (not just the sampled ones), so every child that
  survived tiling gets a value: the child layer on ``tiles`` is the head-averaged attention of the child
  within its parent (the paper's Fig. 4 fine-scale map); the parent layer on ``parents`` is each parent's
  gradient x input contribution to the class logit, averaged over covering bags in which every parent
  appears at least once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from slidemil.methods.bag import Bag, SlideData, random_parent_bags
from slidemil.methods.base import LayerSpec, Method, Param, ScoreLayer, SlidePrediction
from slidemil.methods.mil import feature_statistics
from slidemil.methods.registry import register_method
from slidemil.models.msa import MSAConfig, MSAModel


def merge_bags(bags: Sequence[Bag]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One slide's parent bags -> (distinct parents [P, dp], distinct tiles [T, dt], children [P, S] into
    those tiles (-1 = missing), bag rows [n_bags, bag_size] into the distinct parents).

    Lets the MSA block run once per distinct parent instead of once per bag slot (exactly equivalent: the
    block has no randomness and sees only one parent and its children)."""
    p_rows = torch.cat([b.index["parents"] for b in bags])
    p_feats = torch.cat([b.tokens["parents"] for b in bags])
    kids = torch.cat([torch.where(b.children >= 0, b.index["tiles"][b.children.clamp_min(0)], -1) for b in bags])
    t_rows = torch.cat([b.index["tiles"] for b in bags])
    t_feats = torch.cat([b.tokens["tiles"] for b in bags])

    _, inv_p, first_p = _unique_first(p_rows)
    uniq_t, _, first_t = _unique_first(t_rows)
    kids = kids[first_p]
    local = torch.searchsorted(uniq_t, kids.clamp_min(0)) if uniq_t.numel() else torch.zeros_like(kids)
    children = torch.where(kids >= 0, local, -1)
    return p_feats[first_p], t_feats[first_t], children, inv_p.view(len(bags), -1)


def _unique_first(rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted unique values, the inverse map, and the position of each value's first occurrence
    (argsort-based: deterministic on every device)."""
    uniq, inv, counts = torch.unique(rows, return_inverse=True, return_counts=True)
    order = torch.argsort(inv, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    return uniq, inv, order[starts]


def _slide_tensors(slide: SlideData) -> tuple[Tensor, Tensor, Tensor]:
    """Every parent of a slide, every tile and the children relation (explain scores all parents)."""
    children = slide.tile_sets["parents"].children
    if children is None:
        raise ValueError(f"{slide.slide_id}: the parents tile set has no children relation")
    return (torch.from_numpy(np.asarray(slide.features["parents"], dtype=np.float32)),
            torch.from_numpy(np.asarray(slide.features["tiles"], dtype=np.float32)),
            torch.from_numpy(np.asarray(children, dtype=np.int64)))


@register_method("msa")
class MSAMethod(Method):
    description = ("Multi-scale attention: parents attend over their s*s children, random parent bags, "
                   "flatten-MLP predictor, SGD (Tan et al. 2023)")
    config_cls = MSAConfig
    required_layers = (LayerSpec("tile_set", "tiles"), LayerSpec("tile_set", "parents"),
                       LayerSpec("features", "tiles"), LayerSpec("features", "parents"))
    search_space = {"dropout": Param("float", 0.0, 0.5), "momentum": Param("float", 0.0, 0.95),
                    "d_model": Param("categorical", choices=(256, 512, 1024, 2048))}
    data_fields = ("in_dim", "parent_dim", "n_classes")

    @classmethod
    def resolve_config(cls, section: Mapping[str, Any], *, n_classes: int,
                       feature_dims: Mapping[str, int]) -> dict[str, Any]:
        if "parents" not in feature_dims:
            raise ValueError("method msa reads parents features: set tiling.multiscale_factor > 0 and add "
                             "parents to features.tile_sets ([tiles, parents])")
        values = {**dict(section), "n_classes": n_classes, "in_dim": int(feature_dims["tiles"]),
                  "parent_dim": int(feature_dims["parents"])}
        return MSAConfig.from_dict(values).to_dict()

    def input_dims(self) -> dict[str, int]:
        return {"tiles": int(self.config.in_dim), "parents": int(self.config.parent_dim)}

    def build_model(self) -> MSAModel:
        return MSAModel(self.config)

    def fit_data_statistics(self, model: MSAModel, slides: Sequence[SlideData]) -> None:
        model.set_feature_stats(feature_statistics(slides, "tiles"), feature_statistics(slides, "parents"))

    def bags(self, slide: SlideData, *, training: bool, rng: np.random.Generator | None = None) -> list[Bag]:
        """Training: fresh random bags from the caller's generator; inference: the fixed seeded set."""
        if training:
            rng = rng if rng is not None else np.random.default_rng()
        else:
            rng = np.random.default_rng(self.config.inference_seed)
        return random_parent_bags(slide, self.config.n_bags, self.config.bag_size, rng)

    def _logits(self, model: MSAModel, bags: list[Bag]) -> Tensor:
        return model(*merge_bags(bags)).logits

    def training_loss(self, model: MSAModel, bags: list[Bag]) -> tuple[Tensor, dict[str, float]]:
        label = bags[0].label_tensor()
        logits = self._logits(model, bags)
        loss = model.loss(logits, int(label))
        return loss, {"loss": float(loss.detach()),
                      "error": float((logits.detach().argmax(1) != label.to(logits.device)).float().mean())}

    def evaluate(self, model: MSAModel, bags: list[Bag]) -> tuple[np.ndarray, float | None]:
        logits = self._logits(model, bags)
        probs = torch.softmax(logits, dim=1).mean(0)
        loss = None if bags[0].label is None else float(model.loss(logits, int(bags[0].label)))
        return probs.detach().float().cpu().numpy(), loss

    def configure_optimizers(self, model: MSAModel, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """SGD as in the paper (the learning rate is the trainer's; momentum is a config field)."""
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=self.config.momentum,
                               weight_decay=weight_decay)

    def predict(self, model: MSAModel, slide: SlideData) -> SlidePrediction:
        """Mean bag probability, with the fraction of bags voting for each class beside it."""
        with torch.inference_mode():
            probs = torch.softmax(self._logits(model, self.bags(slide, training=False)), dim=1)
        votes = np.bincount(probs.argmax(1).cpu().numpy(), minlength=self.n_classes) / probs.shape[0]
        return SlidePrediction(probs.mean(0).double().cpu().numpy(), votes=votes)

    def explain(self, model: MSAModel, slide: SlideData, class_index: int,
                class_names: Sequence[str]) -> list[ScoreLayer]:
        parents, tiles, children = _slide_tensors(slide)
        with torch.inference_mode():
            _, attn = model.attend(parents, tiles, children)
        child = child_attention_map(attn.mean(1).cpu().numpy(), children.numpy(), len(slide.tile_sets["tiles"]))
        contrib = self._parent_contributions(model, parents, tiles, children, class_index)
        name = class_names[class_index]
        parent_layer = ScoreLayer("parent_contribution", "parents", contrib, "contribution", name,
                                  "gradient x input of each parent's fused vector on this class's logit, mean "
                                  "over bags that cover every parent")
        if self.config.fusion != "msa":  # ablation variants attend to nothing: no fine-scale map
            return [parent_layer]
        return [
            ScoreLayer("child_attention", "tiles", child, "attention", name,
                       "MSA attention of each child within its parent (mean over heads; every parent scored "
                       "once); 0 for tiles that belong to no parent"),
            parent_layer,
        ]

    def _parent_contributions(self, model: MSAModel, parents: Tensor, tiles: Tensor, children: Tensor,
                              class_index: int) -> np.ndarray:
        """Each parent's first-order contribution (gradient x input) to one logit, averaged over its slots in
        covering bags: a seeded permutation of all parents cut into bags, the last one topped up at random."""
        n, size = parents.shape[0], self.config.bag_size
        rng = np.random.default_rng(self.config.inference_seed)
        order = rng.permutation(n)
        n_bags = -(-n // size)
        fill = rng.choice(n, size=n_bags * size - n, replace=True)
        rows = torch.from_numpy(np.concatenate([order, fill]).reshape(n_bags, size))
        with torch.no_grad():
            updated, _ = model.attend(parents, tiles, children)
        with torch.enable_grad():
            slots = updated[rows].detach().requires_grad_(True)  # [n_bags, size, dp]
            logit = model.predictor(slots.flatten(1))[:, class_index].sum()
            (grad,) = torch.autograd.grad(logit, slots)
        per_slot = (grad * slots.detach()).sum(-1)  # [n_bags, size]
        total = np.zeros(n)
        count = np.zeros(n)
        np.add.at(total, rows.numpy().ravel(), per_slot.numpy().ravel())
        np.add.at(count, rows.numpy().ravel(), 1.0)
        return total / count


def child_attention_map(attention: np.ndarray, children: np.ndarray, n_tiles: int) -> np.ndarray:
    """Per-parent child attention [P, S] -> one value per tile: the mean over the parents the tile is a
    child of (one with non-overlapping parents), 0 for tiles that are no parent's child."""
    kept = children >= 0
    total = np.zeros(n_tiles)
    count = np.zeros(n_tiles)
    np.add.at(total, children[kept], attention[kept])
    np.add.at(count, children[kept], 1.0)
    return np.divide(total, count, out=np.zeros(n_tiles), where=count > 0)
