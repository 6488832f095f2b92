"""``kmeans``: k-means on the tile features, an offline alternative to SAM that needs no pixels.

Each cluster becomes one segment per tissue contour frame (so a cluster split across two tissue pieces is
two regions, as SAM would see them). A cluster's area is its tiles' footprint area in the frame's pixels,
the unit SAM areas are in, so SAM-MIL's masking ratio r(A) means the same for every segmenter. Recorded as
``kmeans``, never as SAM.
"""

from __future__ import annotations

import numpy as np

from slidemil.segmenters.base import Segmenter, SlideInput, register_segmenter
from slidemil.segmenters.segments import SegmentMask, Segments, from_groups


@register_segmenter("kmeans")
class KMeansSegmenter(Segmenter):
    """``n_clusters`` clusters (fewer on slides with fewer tiles), scikit-learn k-means, fixed seed."""

    needs_features = True
    needs_pixels = False

    def __init__(self, variant: str | None = None, *, max_side: int = 1024, n_clusters: int = 8, seed: int = 0):
        super().__init__(variant, max_side=max_side, n_clusters=int(n_clusters), seed=int(seed))

    def segment(self, slide: SlideInput) -> tuple[Segments, list[SegmentMask]]:
        from sklearn.cluster import KMeans

        if slide.features is None:
            raise ValueError(f"{slide.slide_id}: the kmeans segmenter needs the tile features")
        n = slide.coords.shape[0]
        k = max(1, min(self.settings["n_clusters"], n))
        labels = KMeans(k, n_init=4, random_state=self.settings["seed"]).fit_predict(
            np.asarray(slide.features, dtype=np.float64)) if n else np.zeros(0, dtype=int)
        frames = self.frames(slide)
        box = np.stack([f.footprint(slide.coords, slide.tile_level0_px) for f in frames])  # (F, N, 4)
        centre = slide.coords + slide.tile_level0_px / 2
        members, areas, masks = [], [], []
        for fi, frame in enumerate(frames):
            inside = ((centre[:, 0] >= frame.x0) & (centre[:, 1] >= frame.y0)
                      & (centre[:, 0] < frame.x0 + frame.width * frame.downsample)
                      & (centre[:, 1] < frame.y0 + frame.height * frame.downsample))
            for c in range(k):
                tiles = np.flatnonzero(inside & (labels == c))
                if tiles.size == 0:
                    continue
                mask = np.zeros((frame.height, frame.width), dtype=bool)
                for c0, r0, c1, r1 in box[fi, tiles]:
                    mask[r0:r1, c0:c1] = True
                members.append(tiles)
                areas.append(tiles.size * (slide.tile_level0_px / frame.downsample) ** 2)
                masks.append(SegmentMask(frame, mask))
        per_tile = (slide.tile_level0_px / max((f.downsample for f in frames), default=1.0)) ** 2
        return from_groups(n, members, areas, per_tile), masks
