"""Per-slide H&E stain separation (Macenko et al. 2009, adapted per slide as in CLASS-M:
methods.md section C, "Adaptive stain separation").

One stain matrix per slide is fitted from pixels sampled across its tissue tiles (:func:`fit_stain_matrix`,
:func:`fit_slide_stains`), cached as the ``stains`` store layer (:mod:`.layer`) and then applied to any tile:
8-bit H and E images for the CLASS-M encoders (:func:`separate`) or a colour normalisation to a reference
matrix (:func:`normalise`). The numerical core is pure numpy; only :mod:`.slide` touches a slide reader.
"""

from slidemil.stains.config import StainConfig
from slidemil.stains.fit import fit_stain_matrix, optical_density, sample_pixels
from slidemil.stains.matrix import FALLBACK, FITTED, StainMatrix, reference_matrix
from slidemil.stains.separation import concentrations, normalise, reconstruct_od, separate
from slidemil.stains.slide import fit_slide_stains

__all__ = [
    "FALLBACK",
    "FITTED",
    "StainConfig",
    "StainMatrix",
    "concentrations",
    "fit_slide_stains",
    "fit_stain_matrix",
    "normalise",
    "optical_density",
    "reconstruct_od",
    "reference_matrix",
    "sample_pixels",
    "separate",
]
