"""CLASS-M as a registered method: semi-supervised tile classification on per-slide H and E images
(Zhang et al., MedIA; methods.md section C).

Unlike the MIL methods it reads tile *pixels*, not features, and trains on tiles, not slides: the training
loop is :func:`slidemil.training.tiles.train_tiles`, and this module gives it the two pieces it composes -
:func:`make_views` (RGB colour jitter -> stain separation with the slide's matrix -> per-channel rotation,
flips, crop, normalisation) and :meth:`ClassMMethod.training_step` (L = L_x + lambda_u(t) L_u + lambda_c L_c).
On a slide, :meth:`ClassMMethod.predict` classifies every tile and :meth:`ClassMMethod.explain` returns one
``probability`` score layer per class (absolute 0-1 maps).

Slide inputs: ``SlideData.layers["tile_pixels"]`` = (N, P, P, 3) uint8 RGB of the ``tiles`` set and
``layers["stains"]`` = the slide's :class:`~slidemil.stains.StainMatrix` (the ``stains`` layer).

Slide label from tile classes (for users who want one): the slide probabilities are the mean of the tile
probabilities, so the predicted slide class is the class with the largest mean tile probability. Choices
the paper leaves open: the unlabelled part of the mixed batch is the first of the K augmented copies (the
K copies only form the pseudo-label), the triplet negatives are "the next tile after a shuffle" of the
mixed batch, and pseudo-labels come from the training model under no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slidemil.methods.bag import Bag, SlideData, TileSetView
from slidemil.methods.base import LayerSpec, Method, Param, ScoreLayer, SlidePrediction
from slidemil.methods.registry import register_method
from slidemil.models.classm import ClassMConfig, ClassMNet
from slidemil.models.classm_losses import (
    he_triplet_loss,
    lambda_u_ramp,
    mixup,
    mixup_lambda,
    probability_mse,
    pseudo_labels,
    soft_cross_entropy,
)
from slidemil.slides.geometry import TileGeometry
from slidemil.slides.reader import SlideReader
from slidemil.slides.tile_set import TileSetLayer
from slidemil.stains import StainMatrix, separate

PIXELS = "tile_pixels"
STAINS = "stains"
_RGB_VIEWS = {"rg": (0, 1), "rb": (0, 2)}


def read_tile_pixels(reader: SlideReader, coords: np.ndarray, geometry: TileGeometry, px: int) -> np.ndarray:
    """(N, px, px, 3) uint8 RGB of the given tiles, each read at the tile set's resolution and resized to the
    model's ``input_px`` (area interpolation) - what ``layers["tile_pixels"]`` holds."""
    import cv2

    out = np.zeros((len(coords), px, px, 3), np.uint8)
    for i, (x, y) in enumerate(np.asarray(coords, dtype=np.int64).reshape(-1, 2)):
        out[i] = cv2.resize(reader.read_tile((int(x), int(y)), geometry), (px, px), interpolation=cv2.INTER_AREA)
    return out


def slide_data(reader: SlideReader, tiles: TileSetLayer, matrix: StainMatrix | None, px: int,
               label: int | None = None) -> SlideData:
    """A CLASS-M-ready :class:`SlideData` of one slide's ``tiles`` set: coordinates, the tiles' pixels at
    ``px`` and the slide's stain matrix (for the scoring path: the heatmaps stage, serving, the CLI)."""
    view = TileSetView(np.asarray(tiles.coords, dtype=np.int64), int(tiles.geometry.level0_px))
    return SlideData(tiles.slide_id, label, {"tiles": view}, {},
                     {PIXELS: read_tile_pixels(reader, tiles.coords, tiles.geometry, px), STAINS: matrix})


def color_jitter(rgb: Tensor, strength: float, gen: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s] per tile; (B, 3, h, w) in
    [0, 1] in and out."""
    if strength <= 0:
        return rgb
    b = rgb.shape[0]

    def factor() -> Tensor:
        return (1.0 + (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * strength).to(rgb)

    weights = torch.tensor([0.299, 0.587, 0.114], dtype=rgb.dtype).view(1, 3, 1, 1)
    x = rgb * factor()
    grey_mean = (x * weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    x = (x - grey_mean) * factor() + grey_mean
    grey = (x * weights).sum(1, keepdim=True)
    x = (x - grey) * factor() + grey
    return x.clamp(0.0, 1.0)


def channel_augment(x: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """Per-tile random rotation by a multiple of 90 degrees, horizontal / vertical flips and a random crop
    after reflect padding (a translation); (B, 1, P, P) in and out. Exact (no interpolation)."""
    out = []
    p = x.shape[-1]
    padded = F.pad(x, (pad,) * 4, mode="reflect") if pad > 0 else x
    for i in range(x.shape[0]):
        dy, dx = (torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist() if pad > 0 else (0, 0))
        t = padded[i, :, dy:dy + p, dx:dx + p]
        t = torch.rot90(t, int(torch.randint(0, 4, (1,), generator=gen)), dims=(1, 2))
        if bool(torch.randint(0, 2, (1,), generator=gen)):
            t = t.flip(2)
        if bool(torch.randint(0, 2, (1,), generator=gen)):
            t = t.flip(1)
        out.append(t)
    return torch.stack(out)


def make_views(rgb: np.ndarray, matrices: Sequence[StainMatrix | None], config: ClassMConfig, *,
               augment: bool, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(B, P, P, 3) uint8 RGB tiles + each tile's stain matrix -> the two normalised (B, 1, P, P) views.

    Training order (the article's): colour jitter on RGB, then stain separation, then rotation / flips / crop
    on each view independently, then per-channel normalisation. ``views="rg"``/``"rb"`` replaces separation
    by two raw RGB channels (the "without stain separation" ablation).
    """
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"CLASS-M needs (B, P, P, 3) uint8 tiles, got {rgb.shape} {rgb.dtype}")
    if rgb.shape[1] != config.input_px or rgb.shape[2] != config.input_px:
        raise ValueError(f"CLASS-M was configured for {config.input_px} px tiles, got {rgb.shape[1:3]} "
                         "(resize the tiles when reading them)")
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    x = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0
    if augment:
        x = color_jitter(x, config.color_jitter, gen)
    if config.views == "he":
        if len(matrices) != rgb.shape[0] or any(m is None for m in matrices):
            raise ValueError("stain-separated views need one stain matrix per tile")
        jittered = np.rint(x.permute(0, 2, 3, 1).numpy() * 255.0).astype(np.uint8)
        h = np.empty(jittered.shape[:3], np.uint8)
        e = np.empty_like(h)
        for m in {id(m): m for m in matrices}.values():
            rows = np.array([i for i, mi in enumerate(matrices) if mi is m])
            h[rows], e[rows] = separate(jittered[rows], m)
        a = torch.from_numpy(h).float().unsqueeze(1) / 255.0
        b = torch.from_numpy(e).float().unsqueeze(1) / 255.0
    else:
        ia, ib = _RGB_VIEWS[config.views]
        a, b = x[:, ia:ia + 1], x[:, ib:ib + 1]
    if augment:
        a, b = channel_augment(a, config.crop_pad, gen), channel_augment(b, config.crop_pad, gen)
    return (a - config.channel_mean) / config.channel_std, (b - config.channel_mean) / config.channel_std


@register_method("class_m")
class ClassMMethod(Method):
    """CLASS-M (tile classifier on H/E views); trained by :func:`slidemil.training.tiles.train_tiles`."""

    description = "CLASS-M: semi-supervised tile classifier on per-slide H/E images (Zhang et al., MedIA)"
    config_cls = ClassMConfig
    required_layers = (LayerSpec("tile_set"), LayerSpec(STAINS), LayerSpec("tile_labels"))
    search_space = {"lambda_c": Param("float", 0.001, 1.0, log=True), "lambda_u": Param("float", 1.0, 75.0, log=True),
                    "mixup_alpha": Param("float", 0.1, 2.0)}
    monitor = "val_balanced_accuracy"
    mode = "max"
    data_fields = ("n_classes",)
    trains_on = "tiles"

    @classmethod
    def resolve_config(cls, section, *, n_classes: int, feature_dims) -> dict[str, Any]:
        return cls.config_cls.from_dict({**dict(section), "n_classes": n_classes}).to_dict()

    def input_dims(self) -> dict[str, int]:
        return {}  # reads pixels, no feature layer

    def build_model(self) -> ClassMNet:
        return ClassMNet(self.config)

    def configure_optimizers(self, model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        if self.config.optimizer == "rmsprop":
            return torch.optim.RMSprop(model.parameters(), lr=lr, weight_decay=weight_decay)
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

    # ---- training (one step of the tile loop) ------------------------------------------------------
    def training_step(self, model: ClassMNet, labelled: tuple[np.ndarray, list, np.ndarray],
                      unlabelled: tuple[np.ndarray, list] | None, epoch: float, rng: np.random.Generator,
                      gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Loss of one step: ``labelled`` = (rgb, matrices, class indices), ``unlabelled`` = (rgb, matrices)
        or None (the supervised baseline); ``epoch`` is fractional (for the lambda_u ramp)."""
        cfg = self.config
        rgb_l, mat_l, y = labelled
        h_l, e_l = make_views(rgb_l, mat_l, cfg, augment=True, gen=gen)
        targets = F.one_hot(torch.as_tensor(y, dtype=torch.long), cfg.n_classes).float()
        n_l = h_l.shape[0]
        views_h, views_e = [h_l], [e_l]
        if unlabelled is not None and len(unlabelled[0]):
            rgb_u, mat_u = unlabelled
            copies = [make_views(rgb_u, mat_u, cfg, augment=True, gen=gen) for _ in range(cfg.k_augment)]
            with torch.no_grad():
                probs = [F.softmax(model(h, e)[0], dim=1) for h, e in copies]
            targets = torch.cat([targets, pseudo_labels(probs, cfg.temperature)])
            views_h.append(copies[0][0])
            views_e.append(copies[0][1])
        h_all, e_all = torch.cat(views_h), torch.cat(views_e)
        n = h_all.shape[0]
        perm = torch.from_numpy(rng.permutation(n))
        lam = mixup_lambda(rng, cfg.mixup_alpha)
        (h_mix, e_mix), t_mix = mixup([h_all, e_all], targets, lam, perm)
        logits, f_h, f_e = model(h_mix, e_mix)
        loss_x = soft_cross_entropy(logits[:n_l], t_mix[:n_l])
        loss = loss_x
        parts = {"loss_x": float(loss_x.detach()), "lambda": lam}
        if n > n_l:
            loss_u = probability_mse(logits[n_l:], t_mix[n_l:])
            w_u = lambda_u_ramp(epoch, cfg.lambda_u, cfg.ramp_epochs)
            loss = loss + w_u * loss_u
            parts.update(loss_u=float(loss_u.detach()), lambda_u=w_u)
        if cfg.lambda_c > 0 and n >= 2:
            order = torch.from_numpy(rng.permutation(n))
            negatives = torch.empty(n, dtype=torch.long)
            negatives[order] = torch.roll(order, -1)
            loss_c = he_triplet_loss(f_h, f_e, cfg.margin, negatives)
            loss = loss + cfg.lambda_c * loss_c
            parts["loss_c"] = float(loss_c.detach())
        parts["loss"] = float(loss.detach())
        return loss, parts

    # ---- inference ---------------------------------------------------------------------------------
    def tile_probabilities(self, model: ClassMNet, rgb: np.ndarray, matrices: Sequence[StainMatrix | None],
                           batch_size: int = 64) -> np.ndarray:
        """(N, C) class probabilities of un-augmented tiles (use the EMA model in eval mode)."""
        out = []
        with torch.inference_mode():
            for s in range(0, rgb.shape[0], batch_size):
                h, e = make_views(rgb[s:s + batch_size], list(matrices[s:s + batch_size]), self.config, augment=False)
                out.append(F.softmax(model(h, e)[0], dim=1).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.n_classes), np.float32)

    def _slide_tiles(self, model: ClassMNet, slide: SlideData) -> np.ndarray:
        if PIXELS not in slide.layers:
            raise ValueError(f"{slide.slide_id}: CLASS-M classifies tile pixels; SlideData.layers has no "
                             f"{PIXELS!r} (read the tiles' RGB with the bundle's tiling)")
        rgb = np.asarray(slide.layers[PIXELS])
        if rgb.shape[0] != slide.n_tiles():
            raise ValueError(f"{slide.slide_id}: {rgb.shape[0]} tile images for {slide.n_tiles()} tiles")
        if rgb.shape[0] == 0:
            raise ValueError(f"{slide.slide_id}: no tiles to classify")
        matrix = slide.layers.get(STAINS)
        if self.config.views == "he" and matrix is None:
            raise ValueError(f"{slide.slide_id}: CLASS-M needs the slide's stain matrix (layer {STAINS!r})")
        return self.tile_probabilities(model, rgb, [matrix] * rgb.shape[0])

    def predict(self, model: ClassMNet, slide: SlideData) -> SlidePrediction:
        """Slide probabilities = mean tile probabilities (the slide label rule in the module docstring)."""
        return SlidePrediction(self._slide_tiles(model, slide).mean(0).astype(np.float64))

    def explain(self, model: ClassMNet, slide: SlideData, class_index: int,
                class_names: Sequence[str]) -> list[ScoreLayer]:
        """One absolute probability map per class, the requested class first."""
        probs = self._slide_tiles(model, slide)
        order = [class_index, *[c for c in range(len(class_names)) if c != class_index]]
        return [ScoreLayer(f"p_{class_names[c]}", "tiles", probs[:, c].astype(np.float64), "probability",
                           class_names[c], f"CLASS-M tile probability of {class_names[c]}") for c in order]

    # ---- the slide-bag hooks do not apply to a tile classifier ------------------------------------------
    def bags(self, slide: SlideData, *, training: bool, rng: np.random.Generator | None = None) -> list[Bag]:
        raise NotImplementedError("CLASS-M trains on tiles: use slidemil.training.tiles.train_tiles")

    def training_loss(self, model: nn.Module, bags: list[Bag]) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError("CLASS-M trains on tiles: use slidemil.training.tiles.train_tiles")

    def evaluate(self, model: nn.Module, bags: list[Bag]) -> tuple[np.ndarray, float | None]:
        raise NotImplementedError("CLASS-M trains on tiles: use slidemil.training.tiles.train_tiles")
