"""Patch encoders behind one registry: ``build_encoder(name, weights)`` -> :class:`Encoder`."""

from slidemil.encoders.catalog import register_encoder
from slidemil.encoders.encoder import Encoder
from slidemil.encoders.registry import available_encoders, build_encoder
from slidemil.encoders.weights import EncoderWeightsError, WeightsSpec

__all__ = [
    "Encoder",
    "EncoderWeightsError",
    "WeightsSpec",
    "available_encoders",
    "build_encoder",
    "register_encoder",
]
