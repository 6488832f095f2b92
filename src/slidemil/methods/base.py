"""The method contract: everything training, tuning, bundles, heatmaps, serving and the dashboard may ask of
a method, so that a new method is one module plus its config (docs/adr/0007-method-contract-and-bundle-format-2.md).

A :class:`Method` owns its config class, model, bag builder, losses, optimiser, search space, selection
metric, how several bags of one slide become one prediction, and :meth:`Method.explain`, which returns named
:class:`ScoreLayer` objects. Nothing outside a method's own module tests its name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from slidemil.methods.bag import Bag, SlideData

ScoreKind = Literal["attention", "contribution", "rank", "probability"]
#: kinds whose values only order tiles within one slide: painted as within-slide percentiles
RELATIVE_KINDS: frozenset[str] = frozenset({"attention", "contribution", "rank"})


@dataclass(frozen=True)
class ScoreLayer:
    """One per-tile score map of a slide: ``values[i]`` belongs to tile i of ``tile_set``.

    ``kind`` says how to read the values: attention / contribution / rank only order tiles within a slide
    (heatmaps paint their within-slide percentiles); probability is absolute (painted on a fixed 0-1 scale).
    """

    name: str
    tile_set: str
    values: np.ndarray
    kind: ScoreKind
    class_name: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("attention", "contribution", "rank", "probability"):
            raise ValueError(f"score layer {self.name!r}: unknown kind {self.kind!r}")

    @property
    def relative(self) -> bool:
        return self.kind in RELATIVE_KINDS

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tile_set": self.tile_set, "kind": self.kind, "class_name": self.class_name,
                "description": self.description, "values": [float(v) for v in np.asarray(self.values)]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreLayer:
        """Inverse of :meth:`to_dict` (a record read back by the dashboard)."""
        return cls(d["name"], d["tile_set"], np.asarray(d["values"], dtype=np.float64), d["kind"],
                   d.get("class_name"), d.get("description", ""))


@dataclass(frozen=True)
class LayerSpec:
    """A store layer a method needs: ``kind`` (tile_set, features, stains, segments, tile_labels) + name."""

    kind: str
    name: str = "tiles"

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class Param:
    """One searchable config field: ``kind`` float / int / categorical, bounds or choices, log scale."""

    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    log: bool = False

    def suggest(self, trial: Any, name: str, override: Sequence | None = None) -> Any:
        """Draw from an Optuna trial; ``override`` ([low, high] or choices from params.yaml) replaces the
        default range."""
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(override or self.choices))
        low, high = (override if override is not None else (self.low, self.high))
        if self.kind == "int":
            return trial.suggest_int(name, int(low), int(high), log=self.log)
        return trial.suggest_float(name, float(low), float(high), log=self.log)


@dataclass
class SlidePrediction:
    """A method's answer for one slide: class probabilities and the index of the predicted class; methods that
    vote over several bags also give the fraction of bags voting for each class."""

    probs: np.ndarray  # (C,) float
    votes: np.ndarray | None = None  # (C,) fractions summing to 1, or None

    @property
    def vote_index(self) -> int | None:
        """Majority-vote class (ties: the lowest index), or None for single-bag methods."""
        return None if self.votes is None else int(np.argmax(self.votes))

    @property
    def label_index(self) -> int:
        return int(np.argmax(self.probs))


class Method:
    """Base class of every registered method. Subclasses set the class attributes and override the hooks.

    Class attributes:
        name: registry key (``clam_sb``); set by :func:`slidemil.methods.registry.register_method`.
        config_cls: dataclass with ``from_dict`` / ``to_dict``; validated strictly (unknown keys fail).
        required_layers: store layers the bag builder reads.
        search_space: config fields Optuna may change, with their default ranges (params.yaml may narrow them).
        monitor / mode: the validation metric for early stopping and checkpointing, and its direction.
        data_fields: config fields filled from the data, not from params.yaml (feature size, class count).
        trains_on: "slides" (the bag loop of :mod:`slidemil.training.fold`) or "tiles" (a tile classifier
            trained by :mod:`slidemil.training.tiles`, e.g. CLASS-M).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_cls: ClassVar[type]
    required_layers: ClassVar[tuple[LayerSpec, ...]] = (LayerSpec("tile_set"), LayerSpec("features"))
    search_space: ClassVar[Mapping[str, Param]] = {}
    monitor: ClassVar[str] = "val_loss"
    mode: ClassVar[Literal["min", "max"]] = "min"
    data_fields: ClassVar[tuple[str, ...]] = ("in_dim", "n_classes")
    #: "slides" = trained by the slide-bag loop (training.fold); "tiles" = a tile classifier with its own loop
    trains_on: ClassVar[Literal["slides", "tiles"]] = "slides"

    def __init__(self, config: Any) -> None:
        if isinstance(config, Mapping):
            config = self.config_cls.from_dict(config)
        if not isinstance(config, self.config_cls):
            raise TypeError(f"method {self.name!r} needs a {self.config_cls.__name__} or a mapping, "
                            f"got {type(config).__name__}")
        self.config = config

    # ---- config ---------------------------------------------------------------------------------
    @classmethod
    def resolve_config(cls, section: Mapping[str, Any], *, n_classes: int,
                       feature_dims: Mapping[str, int]) -> dict[str, Any]:
        """params.yaml section + what the data says -> a full, validated config dict."""
        data = {"n_classes": n_classes, "in_dim": int(feature_dims.get("tiles", 0))}
        values = {**dict(section), **{k: data[k] for k in cls.data_fields if k in data}}
        return cls.config_cls.from_dict(values).to_dict()

    def input_dims(self) -> dict[str, int]:
        """Feature size expected per tile set (checked against the bundle's encoders)."""
        return {"tiles": int(self.config.in_dim)}

    @property
    def n_classes(self) -> int:
        return int(self.config.n_classes)

    # ---- model and training ---------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def fit_data_statistics(self, model: nn.Module, slides: Sequence[SlideData]) -> None:
        """Fit anything learnt from training data before the first epoch (e.g. input standardisation)."""

    def bags(self, slide: SlideData, *, training: bool, rng: np.random.Generator | None = None) -> list[Bag]:
        """The bag builder: one slide's layers -> the bags of one step (training) or of one prediction."""
        raise NotImplementedError

    def training_loss(self, model: nn.Module, bags: list[Bag]) -> tuple[Tensor, dict[str, float]]:
        """Loss of one slide's training bags (backpropagated) and detached parts to log."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, bags: list[Bag]) -> tuple[np.ndarray, float | None]:
        """(slide probabilities (C,), loss or None when the bags carry no label); called without gradients.
        Several bags of one slide become one prediction here (mean, vote, ...)."""
        raise NotImplementedError

    def configure_optimizers(self, model: nn.Module, lr: float, weight_decay: float) -> Any:
        """Adam by default (CLAM's choice); a method overrides for SGD, schedulers, ..."""
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

    # ---- inference ------------------------------------------------------------------------------
    def predict(self, model: nn.Module, slide: SlideData) -> SlidePrediction:
        """One slide prediction from its inference bags (several bags: the method decides how they vote)."""
        with torch.inference_mode():
            probs, _ = self.evaluate(model, self.bags(slide, training=False))
        return SlidePrediction(np.asarray(probs, dtype=np.float64))

    def explain(self, model: nn.Module, slide: SlideData, class_index: int,
                class_names: Sequence[str]) -> list[ScoreLayer]:
        """Named per-tile score layers for the predicted (or any) class; the first one is painted by default."""
        raise NotImplementedError
