"""``slic``: SLIC superpixels on each tissue contour's rendered frame (skimage), an offline alternative to SAM.

Superpixels are compact, colour-homogeneous regions, a much weaker notion of "tissue region" than SAM masks;
they let SAM-MIL run without a checkpoint and are recorded as ``slic``, never as SAM.
"""

from __future__ import annotations

import numpy as np

from slidemil.segmenters.base import Segmenter, SlideInput, register_segmenter
from slidemil.segmenters.frames import render_frame
from slidemil.segmenters.segments import Frame, SegmentMask


@register_segmenter("slic")
class SlicSegmenter(Segmenter):
    """``n_segments`` superpixels per frame with SLIC's ``compactness`` (skimage defaults otherwise)."""

    def __init__(self, variant: str | None = None, *, max_side: int = 1024, n_segments: int = 100,
                 compactness: float = 10.0, seed: int = 0):
        super().__init__(variant, max_side=max_side, n_segments=int(n_segments), compactness=float(compactness),
                         seed=int(seed))

    def masks(self, slide: SlideInput, frames: list[Frame]) -> list[SegmentMask]:
        from skimage.segmentation import slic

        out = []
        for frame in frames:
            labels = slic(render_frame(slide.reader, frame), n_segments=self.settings["n_segments"],
                          compactness=self.settings["compactness"], start_label=1, channel_axis=-1)
            out += [SegmentMask(frame, labels == k) for k in np.unique(labels)]
        return out
