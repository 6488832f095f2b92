"""CLAM-SB, CLAM-MB, ABMIL and mean / max pooling on the method contract (methods.md section A).

All five take the whole slide as one bag of tile features, train with Adam on the bag cross-entropy (CLAM
adds its instance-clustering term), select on validation loss, and explain a prediction by one score per
tile: attention for the attention models, each tile's additive contribution to the logit for pooling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from slidemil.methods.bag import Bag, SlideData, whole_slide_bag
from slidemil.methods.base import Method, Param, ScoreLayer
from slidemil.methods.registry import register_method
from slidemil.models import ABMIL, ClamConfig, ClamMB, ClamSB, MaxPoolMIL, MeanPoolMIL, MILConfig, MILModel


def feature_statistics(slides: Sequence[SlideData], tile_set: str = "tiles") -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std over every tile of the training slides (float64 sums, training data only)."""
    total, sq, n = None, None, 0
    for slide in slides:
        x = torch.from_numpy(np.asarray(slide.features[tile_set], dtype=np.float32)).double()
        total = x.sum(0) if total is None else total + x.sum(0)
        sq = (x * x).sum(0) if sq is None else sq + (x * x).sum(0)
        n += x.shape[0]
    if n == 0:
        raise ValueError("no training tiles to standardise features with")
    mean = total / n
    std = (sq / n - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.float()


class WholeSlideMIL(Method):
    """Shared by the five: one whole-slide bag, bag cross-entropy, standardised inputs."""

    config_cls = MILConfig
    model_cls: type[MILModel]
    score_kind = "attention"
    search_space = {"dropout": Param("float", 0.0, 0.5)}

    def build_model(self) -> MILModel:
        return self.model_cls(self.config)

    def fit_data_statistics(self, model: MILModel, slides: Sequence[SlideData]) -> None:
        model.set_feature_stats(*feature_statistics(slides))

    def bags(self, slide: SlideData, *, training: bool, rng: np.random.Generator | None = None) -> list[Bag]:
        return [whole_slide_bag(slide)]

    def training_loss(self, model: MILModel, bags: list[Bag]) -> tuple[Tensor, dict[str, float]]:
        (bag,) = bags
        label = bag.label_tensor()
        out = model(bag.tokens["tiles"], label=label, instance_eval=True)
        loss, parts = model.loss(out, label)
        logged = {"loss": float(parts["total"]), "error": float(out.prediction != bag.label)}
        if "instance" in parts:
            logged["inst_loss"] = float(parts["instance"])
        return loss, logged

    def evaluate(self, model: MILModel, bags: list[Bag]) -> tuple[np.ndarray, float | None]:
        (bag,) = bags
        out = model(bag.tokens["tiles"])
        loss = None if bag.label is None else float(model.bag_loss(out, bag.label))
        return out.probs.detach().float().cpu().numpy(), loss

    def explain(self, model: MILModel, slide: SlideData, class_index: int,
                class_names: Sequence[str]) -> list[ScoreLayer]:
        (bag,) = self.bags(slide, training=False)
        with torch.inference_mode():
            out = model(bag.tokens["tiles"])
            values = model.tile_scores(out, class_index).float().cpu().numpy()
        what = ("raw attention (pre-softmax) of the branch for this class" if self.score_kind == "attention"
                else "each tile's additive contribution to this class's logit")
        return [ScoreLayer(self.score_kind, "tiles", values, self.score_kind, class_names[class_index], what)]


@register_method("clam_sb")
class ClamSBMethod(WholeSlideMIL):
    description = "CLAM single-branch: gated attention + instance clustering (Lu et al. 2021)"
    config_cls = ClamConfig
    model_cls = ClamSB
    search_space = {"dropout": Param("float", 0.0, 0.5), "bag_weight": Param("float", 0.3, 1.0),
                    "k_sample": Param("int", 2, 16)}


@register_method("clam_mb")
class ClamMBMethod(ClamSBMethod):
    description = "CLAM multi-branch: one attention branch and classifier per class (Lu et al. 2021)"
    model_cls = ClamMB


@register_method("abmil")
class ABMILMethod(WholeSlideMIL):
    description = "Gated-attention MIL, no instance clustering (Ilse et al. 2018)"
    model_cls = ABMIL


@register_method("mean_pool")
class MeanPoolMethod(WholeSlideMIL):
    description = "Baseline: mean of the embedded tiles, linear classifier"
    model_cls = MeanPoolMIL
    score_kind = "contribution"


@register_method("max_pool")
class MaxPoolMethod(WholeSlideMIL):
    description = "Baseline: element-wise max of the embedded tiles, linear classifier"
    model_cls = MaxPoolMIL
    score_kind = "contribution"
