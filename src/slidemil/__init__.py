"""slidemil: whole-slide-image classification, from raw slides to served models."""

__version__ = "0.1.0"
