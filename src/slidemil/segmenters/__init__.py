"""Segmenters: tissue regions for spatial-context methods (SAM-MIL, methods.md section D).

``sam:vit_b|vit_l|vit_h`` (Segment Anything), ``slic`` (superpixels) and ``kmeans`` (clusters of tile
features) all produce :class:`Segments`: tile -> group memberships with areas, stored as the ``segments``
layer (:mod:`.layer`). Importing this package registers the three; heavy libraries load on first use.
"""

from slidemil.segmenters import kmeans as _kmeans  # noqa: F401  (registers kmeans)
from slidemil.segmenters import sam as _sam  # noqa: F401  (registers sam)
from slidemil.segmenters import slic as _slic  # noqa: F401  (registers slic)
from slidemil.segmenters.base import (
    Segmenter,
    SlideInput,
    available_segmenters,
    build_segmenter,
    register_segmenter,
)
from slidemil.segmenters.frames import contour_boxes, contour_frames, render_frame
from slidemil.segmenters.layer import (
    KIND,
    read_segments,
    segments_from_layer,
    segments_resume_key,
    write_segments,
)
from slidemil.segmenters.overlay import save_png, segment_overlay
from slidemil.segmenters.sam import CHECKPOINT_URLS, MissingCheckpoint
from slidemil.segmenters.segments import (
    UNSEGMENTED,
    Frame,
    SegmentMask,
    Segments,
    frame_downsample,
    from_groups,
    masks_to_segments,
)

__all__ = [
    "CHECKPOINT_URLS",
    "KIND",
    "UNSEGMENTED",
    "Frame",
    "MissingCheckpoint",
    "SegmentMask",
    "Segmenter",
    "Segments",
    "SlideInput",
    "available_segmenters",
    "build_segmenter",
    "contour_boxes",
    "contour_frames",
    "frame_downsample",
    "from_groups",
    "masks_to_segments",
    "read_segments",
    "register_segmenter",
    "render_frame",
    "save_png",
    "segment_overlay",
    "segments_from_layer",
    "segments_resume_key",
    "write_segments",
]
