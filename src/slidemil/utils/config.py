"""Typed configs built from plain mappings (params.yaml sections, saved bundles) that refuse unknown keys, so a
typo such as ``bag_wieght`` fails loudly instead of silently falling back to the default."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any, TypeVar

C = TypeVar("C", bound="StrictConfig")


class StrictConfig:
    """Mixin for dataclass configs: :meth:`from_dict` (strict) and its inverse :meth:`to_dict`."""

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; allowed keys: {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]
