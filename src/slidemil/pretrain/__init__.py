"""Stage 1 of the multi-scale method (methods.md section B.2): a shared (Siamese) encoder trained with the
supervised contrastive loss on parent tiles and their children, then registered as a checkpoint encoder.

No public code exists for this method (Tan et al., SPIE Medical Imaging 2023); slidemil's is the first public
implementation.
"""

from slidemil.pretrain.data import Batch, MultiScaleBatches, MultiScaleSlide, store_reader
from slidemil.pretrain.loss import COARSE, FINE, multiscale_pairs, supcon_loss
from slidemil.pretrain.model import ProjectionHead, SiameseEncoder, augment
from slidemil.pretrain.train import PretrainConfig, PretrainResult, pretrain, split_slides

__all__ = [
    "COARSE",
    "FINE",
    "Batch",
    "MultiScaleBatches",
    "MultiScaleSlide",
    "PretrainConfig",
    "PretrainResult",
    "ProjectionHead",
    "SiameseEncoder",
    "augment",
    "multiscale_pairs",
    "pretrain",
    "split_slides",
    "store_reader",
    "supcon_loss",
]
