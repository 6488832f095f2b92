"""Slide-level MIL models (CLAM-SB/MB, ABMIL, mean/max pooling) behind one registry and one output contract.

Importing this package registers the built-in models, so ``build_model("clam_sb", {...})`` works.
"""

from slidemil.models.abmil import ABMIL
from slidemil.models.attention import GatedAttention
from slidemil.models.base import MILModel, MILOutput, init_linear_weights
from slidemil.models.clam import ClamMB, ClamSB, select_pseudo_labels
from slidemil.models.config import SIZES, MILConfig
from slidemil.models.losses import SmoothTop1SVM, hard_top1_hinge, hinge_tolerance, smooth_top1_svm
from slidemil.models.pooling import MaxPoolMIL, MeanPoolMIL
from slidemil.models.registry import available_models, build_model, register_model

__all__ = [
    "ABMIL",
    "SIZES",
    "ClamMB",
    "ClamSB",
    "GatedAttention",
    "MILConfig",
    "MILModel",
    "MILOutput",
    "MaxPoolMIL",
    "MeanPoolMIL",
    "SmoothTop1SVM",
    "available_models",
    "build_model",
    "hard_top1_hinge",
    "hinge_tolerance",
    "init_linear_weights",
    "register_model",
    "select_pseudo_labels",
    "smooth_top1_svm",
]
