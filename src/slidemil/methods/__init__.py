"""The method contract and its registry; importing this package registers the built-in methods.

See :mod:`slidemil.methods.base` for the contract and docs/adr/0007-method-contract-and-bundle-format-2.md for its reasons.
"""

from slidemil.methods import classm as _classm  # noqa: F401  (registers class_m)
from slidemil.methods import mil as _mil  # noqa: F401  (registers clam_sb, clam_mb, abmil, mean_pool, max_pool)
from slidemil.methods import msa as _msa  # noqa: F401  (registers msa)
from slidemil.methods import sammil as _sammil  # noqa: F401  (registers sam_mil)
from slidemil.methods.bag import Bag, SlideData, TileSetView, pseudo_bags, random_parent_bags, whole_slide_bag
from slidemil.methods.base import LayerSpec, Method, Param, ScoreLayer, SlidePrediction
from slidemil.methods.registry import (
    available_methods,
    build_method,
    describe_methods,
    get_method,
    register_method,
)

__all__ = [
    "Bag",
    "LayerSpec",
    "Method",
    "Param",
    "ScoreLayer",
    "SlideData",
    "SlidePrediction",
    "TileSetView",
    "available_methods",
    "build_method",
    "describe_methods",
    "get_method",
    "pseudo_bags",
    "random_parent_bags",
    "register_method",
    "whole_slide_bag",
]
