"""Stage 1 training loop (methods.md section B.2): SGD with exponential decay on the supervised contrastive
loss, validation on held-out *training* slides, the lowest-validation-loss encoder kept and registered.

No public code exists for this method (Tan et al., SPIE Medical Imaging 2023); slidemil's is the first public
implementation.

Registration: the kept backbone is written as a plain state_dict with the encoder's own parameter names
(``encoder.pt``), so ``build_encoder(name, "<dir>/encoder.pt")`` loads it like any checkpoint and its weights id
is ``checkpoint:<sha256[:12]>``; ``encoder.json`` records name, weights path, weights id, the slides it saw and
the loss history. Point ``features.encoder`` at it (``name`` + ``weights``) to encode any method's features with it.

Test slides must never reach this function: the caller passes the training slides of the split (inside
cross-validation, the fold's training split), and the validation slides are carved out of those.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slidemil.encoders import build_encoder
from slidemil.encoders.weights import checkpoint_weights_id
from slidemil.pretrain.data import Batch, MultiScaleBatches, MultiScaleSlide, TileReader
from slidemil.pretrain.loss import COARSE, FINE, multiscale_pairs, supcon_loss
from slidemil.pretrain.model import ProjectionHead, SiameseEncoder, augment
from slidemil.utils.atomic import atomic_path, write_text_atomic
from slidemil.utils.config import StrictConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig(StrictConfig):
    """Stage-1 settings; defaults are the paper's (methods.md B.2) unless marked otherwise.

    Attributes:
        encoder: registered backbone shared by both scales (paper: vgg16; slidemil's CPU default resnet18).
        weights: its starting weights ("random", "imagenet", a checkpoint path).
        seed: seeds the start weights, the batches and the augmentations.
        head_hidden / head_out: projection head widths (1024, 256).
        temperature: tau of the loss (0.07).
        lr: SGD learning rate (1e-4); momentum: SGD momentum (paper: plain SGD, 0.0).
        decay_rate: exponential decay per optimiser step, lr_t = lr * exp(-decay_rate * t) (1e-6; see B.5).
        epochs: passes (50); steps_per_epoch / val_batches: batches per epoch and fixed validation batches
            (not in the paper: its epochs are passes over its tile list).
        slides_per_batch / parents_per_slide / children_per_parent: batch layout (not in the paper; None = all
            kept children).
        anchors: "coarse" (the paper's main patches only) or "both" scales as anchors.
        scales: "both" (the unified multi-scale encoder) or one scale, "coarse" / "fine": a single-scale encoder
            of the conventional multi-scale baseline (positives: same slide; negatives: other classes).
        contrast: augmentation contrast range (+-0.2, not in the paper).
        input_px: train at this tile size (None = the encoder's input size, which the features stage uses).
        val_fraction: share of the training slides held out for the validation loss (not in the paper).
        bn_batches: training batches that re-estimate the BatchNorm statistics before each validation (and so
            in the kept encoder); see :func:`recalibrate_batchnorm` (not in the paper).
        probe_tiles_per_slide: tiles per slide for the linear probe that compares the kept encoder with its
            start weights (:mod:`slidemil.pretrain.probe`); 0 = no probe (not in the paper).
    """

    encoder: str = "resnet18"
    weights: str = "random"
    seed: int = 0
    head_hidden: int = 1024
    head_out: int = 256
    temperature: float = 0.07
    lr: float = 1e-4
    momentum: float = 0.0
    decay_rate: float = 1e-6
    epochs: int = 50
    steps_per_epoch: int = 50
    val_batches: int = 8
    slides_per_batch: int = 4
    parents_per_slide: int = 2
    children_per_parent: int | None = None
    anchors: str = "coarse"
    scales: str = "both"
    contrast: float = 0.2
    input_px: int | None = None
    val_fraction: float = 0.2
    bn_batches: int = 4
    probe_tiles_per_slide: int = 0

    def __post_init__(self) -> None:
        for key in ("epochs", "steps_per_epoch", "val_batches", "slides_per_batch", "parents_per_slide"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"PretrainConfig.{key} must be an int >= 1, got {getattr(self, key)!r}")
        if self.scales not in ("both", "coarse", "fine"):
            raise ValueError(f"PretrainConfig.scales must be 'both', 'coarse' or 'fine', got {self.scales!r}")
        if self.anchors not in ("coarse", "both"):
            raise ValueError(f"PretrainConfig.anchors must be 'coarse' or 'both', got {self.anchors!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"PretrainConfig.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.temperature <= 0:
            raise ValueError(f"PretrainConfig.temperature must be > 0, got {self.temperature}")


@dataclass
class PretrainResult:
    checkpoint: Path
    record: dict[str, Any]


def split_slides(slides: Sequence[MultiScaleSlide], fraction: float,
                 rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Per class, ``fraction`` of the slides (at least one, never all) held out for validation."""
    fit, val = [], []
    for label in sorted({s.label for s in slides}):
        idx = rng.permutation([i for i, s in enumerate(slides) if s.label == label])
        n_val = min(max(1, round(fraction * idx.size)), idx.size - 1)
        val += idx[:n_val].tolist()
        fit += idx[n_val:].tolist()
    return sorted(fit), sorted(val)


def recalibrate_batchnorm(model: torch.nn.Module, batches: Sequence[Batch]) -> None:
    """Re-estimate every BatchNorm's running mean / variance as a plain average over ``batches`` (train-mode
    forward passes, no gradients). The kept encoder runs in eval mode in the features stage, where the
    running statistics are all it has; after few or large SGD steps the exponential averages lag the
    weights and an eval-mode encoder can collapse every tile onto one direction."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or not batches:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for b in batches:
            model(b.tiles)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum


SCALES = {"both": (COARSE, FINE), "coarse": (COARSE,), "fine": (FINE,)}


def batch_loss(model: SiameseEncoder, batch: Batch, cfg: PretrainConfig) -> torch.Tensor:
    if cfg.scales != "both":  # single-scale encoder: every tile of that scale is an anchor
        anchors = SCALES[cfg.scales]
    else:
        anchors = (COARSE,) if cfg.anchors == "coarse" else (COARSE, FINE)
    pos, con = multiscale_pairs(batch.slide, batch.scale, batch.place, batch.label, anchors)
    return supcon_loss(model(batch.tiles), pos, con, cfg.temperature)


def pretrain(slides: Sequence[MultiScaleSlide], read: TileReader, cfg: PretrainConfig,
             out_dir: str | Path, n_tiles: Sequence[int] | None = None) -> PretrainResult:
    """Train the shared encoder on ``slides`` (training slides only) and write ``encoder.pt`` + ``encoder.json``.

    ``n_tiles`` (each slide's ``tiles`` count) enables the linear probe when ``cfg.probe_tiles_per_slide``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    fit_idx, val_idx = split_slides(slides, cfg.val_fraction, rng)
    layout = {"slides_per_batch": cfg.slides_per_batch, "parents_per_slide": cfg.parents_per_slide,
              "children_per_parent": cfg.children_per_parent, "scales": SCALES[cfg.scales]}

    def subset(idx: list[int]) -> MultiScaleBatches:
        return MultiScaleBatches([slides[i] for i in idx], lambda i, name, row: read(idx[i], name, row), **layout)

    fit, val = subset(fit_idx), subset(val_idx)
    val_rng = np.random.default_rng(cfg.seed + 1)
    val_set = [val.sample(val_rng) for _ in range(cfg.val_batches)]  # fixed: comparable across epochs

    encoder = build_encoder(cfg.encoder, cfg.weights, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    model = SiameseEncoder(encoder, ProjectionHead(encoder.feature_dim, cfg.head_hidden, cfg.head_out),
                           cfg.input_px)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=math.exp(-cfg.decay_rate))
    gen = torch.Generator().manual_seed(cfg.seed)

    def validation_loss() -> float:
        recalibrate_batchnorm(model, [fit.sample(rng) for _ in range(cfg.bn_batches)])
        model.eval()
        with torch.no_grad():
            return float(np.mean([float(batch_loss(model, b, cfg)) for b in val_set]))

    initial_val_loss = validation_loss()  # the start weights' figure, to show what training bought
    history: list[dict[str, float]] = []
    # the start weights are a candidate too: a run that never beats them keeps them (best_epoch -1)
    best_loss, best_epoch = initial_val_loss, -1
    best_state = copy.deepcopy(model.encoder.backbone.state_dict())
    for epoch in range(cfg.epochs):
        model.train()
        train_losses = []
        for _ in range(cfg.steps_per_epoch):
            b = fit.sample(rng)
            b.tiles = augment(b.tiles, gen, cfg.contrast)
            loss = batch_loss(model, b, cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            train_losses.append(float(loss.detach()))
        val_loss = validation_loss()
        history.append({"epoch": epoch, "train_loss": float(np.mean(train_losses)), "val_loss": val_loss,
                        "lr": float(sched.get_last_lr()[0])})
        log.info("pretrain epoch %d: train %.4f, val %.4f", epoch, history[-1]["train_loss"], val_loss)
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.encoder.backbone.state_dict())
    checkpoint = out_dir / "encoder.pt"
    buf = io.BytesIO()  # saved via memory: a file target names the zip's root after the (random) temp file,
    torch.save(best_state, buf)  # and equal weights must give an equal file, hence an equal weights id
    with atomic_path(checkpoint) as tmp:
        tmp.write_bytes(buf.getvalue())
    probe = None
    if cfg.probe_tiles_per_slide and n_tiles is not None:
        probe = _probe(slides, read, n_tiles, fit_idx, val_idx, cfg, checkpoint)
    record = {
        "name": cfg.encoder,
        "weights": str(checkpoint),
        "weights_id": checkpoint_weights_id(checkpoint),
        "feature_dim": encoder.feature_dim,
        "start_weights_id": encoder.weights_id,
        "best_epoch": best_epoch,
        "best_val_loss": best_loss,
        "initial_val_loss": initial_val_loss,
        "probe": probe,
        "fit_slides": [slides[i].slide_id for i in fit_idx],
        "val_slides": [slides[i].slide_id for i in val_idx],
        "config": asdict(cfg),
        "history": history,
    }
    write_text_atomic(out_dir / "encoder.json", json.dumps(record, indent=2))
    return PretrainResult(checkpoint, record)


def _probe(slides: Sequence[MultiScaleSlide], read: TileReader, n_tiles: Sequence[int], fit_idx: list[int],
           val_idx: list[int], cfg: PretrainConfig, checkpoint: Path) -> dict[str, Any]:
    """Linear-probe AUC of the start encoder and of the kept one on the same tiles (fit slides -> val slides)."""
    from slidemil.pretrain.probe import embed_tiles, linear_probe_auc, probe_tiles

    rng = np.random.default_rng(cfg.seed + 2)
    picks = {part: [(idx[i], r) for i, r in probe_tiles([slides[j] for j in idx], [n_tiles[j] for j in idx],
                                                       cfg.probe_tiles_per_slide, rng)]
             for part, idx in (("fit", fit_idx), ("val", val_idx))}
    labels = {part: np.array([slides[i].label for i, _ in p]) for part, p in picks.items()}
    out: dict[str, Any] = {"tiles_per_slide": cfg.probe_tiles_per_slide,
                           "n_fit_tiles": len(picks["fit"]), "n_val_tiles": len(picks["val"])}
    for key, weights in (("start", cfg.weights), ("trained", str(checkpoint))):
        enc = build_encoder(cfg.encoder, weights, seed=cfg.seed)
        feats = {part: embed_tiles(enc, read, p) for part, p in picks.items()}
        out[f"{key}_auc"] = linear_probe_auc(feats["fit"], labels["fit"], feats["val"], labels["val"])
    return out
