"""Slide-level MIL architectures (CLAM-SB/MB, ABMIL, mean/max pooling) with one output type, and the MSA
multi-scale bag classifier (:mod:`slidemil.models.msa`).

These are plain ``nn.Module`` classes; the methods that train and explain them (and the registry that names
them) live in :mod:`slidemil.methods`.
"""

from slidemil.models.abmil import ABMIL
from slidemil.models.attention import GatedAttention
from slidemil.models.base import MILModel, MILOutput, init_linear_weights
from slidemil.models.clam import ClamMB, ClamSB, select_pseudo_labels
from slidemil.models.config import SIZES, ClamConfig, MILConfig
from slidemil.models.losses import SmoothTop1SVM, hard_top1_hinge, hinge_tolerance, smooth_top1_svm
from slidemil.models.msa import MSAConfig, MSAModel, MultiScaleAttention
from slidemil.models.pooling import MaxPoolMIL, MeanPoolMIL

__all__ = [
    "ABMIL",
    "SIZES",
    "ClamConfig",
    "ClamMB",
    "ClamSB",
    "GatedAttention",
    "MILConfig",
    "MILModel",
    "MILOutput",
    "MSAConfig",
    "MSAModel",
    "MaxPoolMIL",
    "MeanPoolMIL",
    "MultiScaleAttention",
    "SmoothTop1SVM",
    "hard_top1_hinge",
    "hinge_tolerance",
    "init_linear_weights",
    "select_pseudo_labels",
    "smooth_top1_svm",
]
