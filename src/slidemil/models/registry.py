"""Name -> model class registry, so configs and saved bundles refer to models by a stable string.

    @register_model("clam_sb")
    class ClamSB(MILModel): ...

    model = build_model("clam_sb", {"n_classes": 3, "subtyping": True})

Each entry remembers its config class (``MILConfig`` by default), so a plain mapping from params.yaml or a
bundle is validated (unknown keys fail) before the model is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from slidemil.models.config import MILConfig

M = TypeVar("M", bound=type[nn.Module])


@dataclass(frozen=True)
class _Entry:
    cls: type[nn.Module]
    config_cls: type


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, config_cls: type = MILConfig) -> Callable[[M], M]:
    """Class decorator: make ``cls`` buildable as ``build_model(name, config)``; ``cls(config)`` must work."""

    def decorate(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"model name {name!r} already registered by {_REGISTRY[name].cls.__qualname__}")
        _REGISTRY[name] = _Entry(cls, config_cls)
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return decorate


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def build_model(name: str, config: Any) -> nn.Module:
    """Instantiate the model registered as ``name`` from its config object or a plain mapping."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {available_models()}")
    entry = _REGISTRY[name]
    if isinstance(config, Mapping):
        config = entry.config_cls.from_dict(config)
    if not isinstance(config, entry.config_cls):
        raise TypeError(
            f"model {name!r} needs a {entry.config_cls.__name__} or a mapping, got {type(config)}"
        )
    return entry.cls(config)
