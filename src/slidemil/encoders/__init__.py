"""Patch encoders behind one registry: ``build_encoder(name, weights)`` -> :class:`Encoder`."""

from slidemil.encoders.registry import Encoder, available_encoders, build_encoder, register_encoder
from slidemil.encoders.weights import EncoderWeightsError, WeightsSpec

__all__ = [
    "Encoder",
    "EncoderWeightsError",
    "WeightsSpec",
    "available_encoders",
    "build_encoder",
    "register_encoder",
]
