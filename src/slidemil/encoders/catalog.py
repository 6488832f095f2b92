"""The table of registered encoder builders and the decorator that fills it.

Builder modules import only this and :mod:`.encoder`, never :mod:`.registry` (which imports them to fill
the table), so registering a builder cannot create an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable

from slidemil.encoders.encoder import Encoder

Builder = Callable[..., Encoder]
EXACT: dict[str, Builder] = {}
FAMILIES: dict[str, Builder] = {}  # prefix (ending in ":") -> builder(model_name, spec, **kw)


def register_encoder(name: str) -> Callable[[Builder], Builder]:
    """Register a builder ``fn(spec: WeightsSpec, **kw) -> Encoder`` under ``name``.

    A name ending in ``:`` registers a family: ``fn(model_name, spec, **kw)`` receives the rest of the name
    (``timm:`` + ``vit_small_patch16_224`` -> ``model_name='vit_small_patch16_224'``).
    """

    def deco(fn: Builder) -> Builder:
        table = FAMILIES if name.endswith(":") else EXACT
        if name in table and table[name] is not fn:
            raise ValueError(f"encoder {name!r} is already registered by {table[name].__module__}")
        table[name] = fn
        return fn

    return deco
