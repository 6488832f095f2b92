"""Segmenters: tissue regions for spatial-context methods (SAM-MIL, methods.md section D).

``sam:vit_b|vit_l|vit_h`` (Segment Anything), ``slic`` (superpixels) and ``kmeans`` (clusters of tile
features) all produce :class:`Segments`: tile -> group memberships with areas, stored as the ``segments``
layer (:mod:`.layer`). Build one with :func:`slidemil.segmenters.registry.build_segmenter`.

The package root exports only the data types (:mod:`.segments`, numpy alone), so a method can read a
``segments`` layer without importing slide readers, SAM or scikit-image.
"""

from slidemil.segmenters.segments import (
    UNSEGMENTED,
    Frame,
    SegmentMask,
    Segments,
    frame_downsample,
    from_groups,
    masks_to_segments,
)

__all__ = ["UNSEGMENTED", "Frame", "SegmentMask", "Segments", "frame_downsample", "from_groups", "masks_to_segments"]
