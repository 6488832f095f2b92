"""One registry for patch encoders: :func:`build_encoder` and :func:`available_encoders`.

Builders register themselves with a decorator (:func:`~slidemil.encoders.catalog.register_encoder`: exact
names like ``resnet50_trunc``, or families like ``timm:`` that take the rest of the name as an argument).
Callers only ever see :func:`build_encoder`, so a pipeline config or a serving bundle can name an encoder
and its weights as two strings.
"""

from __future__ import annotations

import os
from typing import Any

from slidemil.encoders.catalog import EXACT, FAMILIES
from slidemil.encoders.encoder import Encoder
from slidemil.encoders.weights import DEFAULT_DOWNLOAD_TIMEOUT, WeightsSpec


def available_encoders() -> list[str]:
    """Registered names; families are shown as ``prefix:<model_name>``."""
    _load_builtin()
    return sorted(EXACT) + sorted(f"{p}<model_name>" for p in FAMILIES)


def build_encoder(
    name: str,
    weights: str | os.PathLike = "random",
    *,
    seed: int = 0,
    download: bool = True,
    download_timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
    **kw: Any,
) -> Encoder:
    """Build encoder ``name`` in eval mode.

    ``weights``: "random" (seeded by ``seed``; "random:seed=N" also works), "imagenet" (pretrained, from the
    local cache or downloaded when ``download`` and the network answers within ``download_timeout`` s), or a
    checkpoint path. Raises :class:`~slidemil.encoders.weights.EncoderWeightsError` when weights cannot be
    had, ``KeyError`` for an unknown name.
    """
    _load_builtin()
    spec = WeightsSpec.parse(weights, seed=seed, download=download, timeout=download_timeout)
    if name in EXACT:
        enc = EXACT[name](spec, **kw)
    else:
        prefix = next((p for p in FAMILIES if name.startswith(p) and len(name) > len(p)), None)
        if prefix is None:
            raise KeyError(f"unknown encoder {name!r}; available: {', '.join(available_encoders())}")
        enc = FAMILIES[prefix](name[len(prefix) :], spec, **kw)
    return enc.eval()


def _load_builtin() -> None:
    """Import the built-in builder modules (their decorators fill the tables); cheap after the first call."""
    from slidemil.encoders import timm_encoders, torchvision_encoders  # noqa: F401
