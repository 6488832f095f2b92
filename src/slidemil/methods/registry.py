"""Name -> :class:`~slidemil.methods.base.Method` registry (a decorator, as Slideflow does for its models).

    @register_method("clam_sb")
    class ClamSBMethod(Method): ...

    method = get_method("clam_sb")(config_dict)

Importing :mod:`slidemil.methods` registers the built-in methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import TypeVar

from slidemil.methods.base import Method

M = TypeVar("M", bound=type[Method])

_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: make ``cls`` available as ``get_method(name)``."""

    def decorate(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} already registered by {_REGISTRY[name].__qualname__}")
        if not hasattr(cls, "config_cls"):
            raise TypeError(f"method {name!r} ({cls.__qualname__}) sets no config_cls")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return decorate


def available_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered methods: {available_methods()}")
    return _REGISTRY[name]


def build_method(name: str, config) -> Method:
    """``get_method(name)(config)``; ``config`` is the method's config object or a plain mapping."""
    return get_method(name)(config)


def describe_methods() -> list[dict]:
    """One row per method: name, description, required layers, config fields with defaults, searchable
    fields, selection metric (for ``slidemil methods`` and the docs)."""
    rows = []
    for name in available_methods():
        cls = _REGISTRY[name]
        rows.append({
            "name": name,
            "description": cls.description,
            "layers": [str(spec) for spec in cls.required_layers],
            "config": {f.name: f.default for f in fields(cls.config_cls)},
            "data_fields": list(cls.data_fields),
            "search_space": sorted(cls.search_space),
            "monitor": f"{cls.monitor} ({cls.mode})",
        })
    return rows
