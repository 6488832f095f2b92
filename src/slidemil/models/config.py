"""Typed configuration of the MIL models: :class:`MILConfig` (ABMIL, mean/max pooling) and CLAM's
:class:`ClamConfig`, so CLAM-only fields never reach the other models.

Every default is the CLAM paper's value as restated in docs/methods.md, section A; a bad value fails here,
at construction, with a readable message instead of deep inside a forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from slidemil.utils.config import StrictConfig

#: Hidden sizes (fc width L, attention width D) per model size (methods.md section A: "small" 512/256,
#: "big" 512/384).
SIZES: dict[str, tuple[int, int]] = {"small": (512, 256), "big": (512, 384)}

InstLoss = Literal["svm", "ce"]


@dataclass(frozen=True)
class MILConfig(StrictConfig):
    """Hyper-parameters every slide-level MIL model shares (methods.md section A): ABMIL and the pooling
    baselines use exactly these; CLAM adds its own in :class:`ClamConfig`.

    Attributes:
        in_dim: tile feature size d (1024 for ``resnet50_trunc``, methods.md section 0); set from the data.
        n_classes: number of slide classes C (CLAM's binary default: 2); set from the data.
        size: "small" (fc 512, attention 256) or "big" (fc 512, attention 384).
        dropout: dropout after the fc layer and on both gated-attention paths (0.25).
    """

    in_dim: int = 1024
    n_classes: int = 2
    size: str = "small"
    dropout: float = 0.25

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check_int(name, "in_dim", self.in_dim, minimum=1)
        _check_int(name, "n_classes", self.n_classes, minimum=2)
        if self.size not in SIZES:
            raise ValueError(f"{name}.size must be one of {sorted(SIZES)}, got {self.size!r}")
        _check_float(name, "dropout", self.dropout, low=0.0, high=1.0, high_open=True)

    @property
    def hidden_dim(self) -> int:
        """Width L of the fc layer (the tile embedding the attention pools)."""
        return SIZES[self.size][0]

    @property
    def attention_dim(self) -> int:
        """Width D of the gated-attention paths."""
        return SIZES[self.size][1]


@dataclass(frozen=True)
class ClamConfig(MILConfig):
    """CLAM's hyper-parameters on top of :class:`MILConfig` (methods.md section A).

    Attributes:
        k_sample: B, tiles sampled per side for instance clustering (8; clamped to the bag, see clam.py).
        inst_loss: instance loss, smooth top-1 SVM ("svm", the paper's) or cross-entropy ("ce").
        subtyping: mutually exclusive classes: add the out-of-class clustering terms.
        bag_weight: w in L = w * L_bag + (1 - w) * L_inst (0.7).
        svm_alpha: margin alpha of the smooth SVM (1.0).
        svm_tau: temperature tau of the smooth SVM (1.0).
    """

    k_sample: int = 8
    inst_loss: InstLoss = "svm"
    subtyping: bool = False
    bag_weight: float = 0.7
    svm_alpha: float = 1.0
    svm_tau: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        _check_int(name, "k_sample", self.k_sample, minimum=1)
        if self.inst_loss not in ("svm", "ce"):
            raise ValueError(f"{name}.inst_loss must be 'svm' or 'ce', got {self.inst_loss!r}")
        if not isinstance(self.subtyping, bool):
            raise TypeError(f"{name}.subtyping must be a bool, got {self.subtyping!r}")
        _check_float(name, "bag_weight", self.bag_weight, low=0.0, high=1.0)
        _check_float(name, "svm_alpha", self.svm_alpha, low=0.0)
        _check_float(name, "svm_tau", self.svm_tau, low=0.0, low_open=True)


def _check_int(owner: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}.{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value}")


def _check_float(
    owner: str,
    name: str,
    value: Any,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}.{name} must be a number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(
            f"{owner}.{name} must be in {lo}{low}, {high if high is not None else 'inf'}{hi}, got {value}"
        )
