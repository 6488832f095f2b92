"""Segmenters: the mask -> tile mapping on a hand-made mask, frames per contour, k-means and SLIC groups, and
SAM's automatic mask generator end to end with random weights on a real slide region."""

from __future__ import annotations

import numpy as np
import pytest

from slidemil.segmenters import Frame, SegmentMask, frame_downsample, masks_to_segments
from slidemil.segmenters.base import SlideInput
from slidemil.segmenters.frames import contour_frames
from slidemil.segmenters.registry import build_segmenter
from slidemil.segmenters.sam import CHECKPOINT_URLS, MissingCheckpoint, SamSegmenter


def test_masks_to_segments_hand_made():
    # frame at level-0 (1000, 2000), d = 2, 10 x 8 px; tiles 4 level-0 px = 2 frame px
    frame = Frame(1000, 2000, 10, 8, 2.0)
    a = np.zeros((8, 10), bool)
    a[0:4, 0:4] = True  # 16 px
    b = np.zeros((8, 10), bool)
    b[:, 3:10] = True  # 56 px
    empty = np.zeros((8, 10), bool)
    coords = np.array([[1000, 2000],   # cols 0-1 rows 0-1: A
                       [1006, 2000],   # cols 3-4: A (col 3) and B
                       [1012, 2008],   # cols 6-7 rows 4-5: B
                       [1000, 2012],   # cols 0-1 rows 6-7: none
                       [1001, 2013],   # off-grid: cols 0-2 rows 6-7 (clipped): none
                       [5000, 5000]])  # outside the frame: none
    seg = masks_to_segments(coords, 4, [SegmentMask(frame, a), SegmentMask(frame, empty), SegmentMask(frame, b)])
    assert seg.n_groups == 3 and seg.unsegmented == 2 and seg.n_segments == 2  # the empty mask is dropped
    assert seg.pairs.tolist() == [[0, 0], [1, 0], [1, 1], [2, 1], [3, 2], [4, 2], [5, 2]]
    # sentinel area: 3 tiles x (4 / 2)^2 frame px
    np.testing.assert_array_equal(seg.group_area, [16, 56, 12])
    np.testing.assert_array_equal(seg.relative_area, [16, 16, 56, 12, 12, 12])
    assert seg.smallest_group().tolist() == [0, 0, 1, 2, 2, 2]
    dense = seg.dense()
    assert dense.shape == (6, 3) and dense.sum() == 7 and dense[1].tolist() == [True, True, False]


def test_a_tile_touching_a_mask_by_one_scaled_pixel_is_in_it():
    frame = Frame(0, 0, 8, 8, 4.0)
    m = np.zeros((8, 8), bool)
    m[2, 2] = True  # level-0 [8, 12) x [8, 12)
    # a 5 px tile at (4, 4) spans level-0 [4, 9): frame px 1..2 (ceil(9 / 4) = 3 exclusive) -> overlaps
    seg = masks_to_segments(np.array([[4, 4], [0, 0]]), 5, [SegmentMask(frame, m)])
    assert seg.pairs.tolist() == [[0, 0], [1, 1]] and seg.relative_area[0] == 1


@pytest.mark.parametrize(("w", "h", "d"), [(3000, 800, 4), (1024, 10, 1), (500, 500, 1), (1025, 1, 2),
                                           (8192, 100, 8)])
def test_frame_downsample(w, h, d):
    assert frame_downsample(w, h) == d


def test_contour_frames_clip_and_scale():
    frames = contour_frames([(100, 50, 3100, 850), (-20, -20, 300, 200)], (2000, 1000))
    assert frames[0] == Frame(100, 50, 950, 400, 2.0)  # clipped to 1900 x 800, d = 2
    assert frames[1] == Frame(0, 0, 300, 200, 1.0)
    assert contour_frames([], (4000, 1000)) == [Frame(0, 0, 1000, 250, 4.0)]


def _grid(x0, y0, cols, rows, px):
    ys, xs = np.mgrid[0:rows, 0:cols]
    return np.stack([x0 + xs.ravel() * px, y0 + ys.ravel() * px], axis=1).astype(np.int64)


def test_kmeans_groups_follow_clusters_and_contours():
    coords = np.concatenate([_grid(0, 0, 4, 2, 100), _grid(2000, 0, 4, 2, 100)])  # two tissue pieces
    feats = np.zeros((16, 3))
    feats[[0, 1, 8, 9], 0] = 10.0  # cluster "bright" in both pieces
    slide = SlideInput("s", coords, 100, (3000, 1000), [(0, 0, 400, 200), (2000, 0, 2400, 200)], features=feats)
    seg, masks = build_segmenter("kmeans", {"kmeans": {"n_clusters": 2}}).segment(slide)
    assert seg.unsegmented == -1 and seg.n_groups == 4 and len(masks) == 4  # 2 clusters x 2 pieces
    groups = {tuple(seg.pairs[seg.pairs[:, 1] == g, 0]) for g in range(4)}
    assert groups == {(0, 1), (2, 3, 4, 5, 6, 7), (8, 9), (10, 11, 12, 13, 14, 15)}
    assert sorted(seg.group_area) == [20000, 20000, 60000, 60000]  # tiles x (100 / d=1)^2


def test_slic_on_a_real_region(slides_dir):
    from slidemil.slides import open_slide

    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as reader:
        coords = _grid(0, 0, 6, 4, 256)
        slide = SlideInput("cmu", coords, 256, reader.dimensions, [(0, 0, 1536, 1024)], reader=reader)
        seg, masks = build_segmenter("slic", {"slic": {"n_segments": 20}}).segment(slide)
    assert {m.frame for m in masks} == {Frame(0, 0, 768, 512, 2.0)}
    assert 5 <= seg.n_segments <= 60 and seg.unsegmented == -1
    assert sum(m.area for m in masks) == 768 * 512  # superpixels tile the frame


def test_sam_random_weights_end_to_end(slides_dir):
    """One SAM embedding (crop_n_layers 0) of a real 1400 x 900 region: frame at d = 2, masks of its shape,
    mapped onto a tile grid. Random weights, so thresholds are off: this checks the wiring, not quality."""
    from segment_anything import sam_model_registry

    from slidemil.slides import open_slide

    model = sam_model_registry["vit_b"]()  # no checkpoint: random weights
    segmenter = SamSegmenter("vit_b", model=model, device="cpu",
                             generator={"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                                        "crop_n_layers": 0, "points_per_batch": 16})
    assert segmenter.id == "sam:vit_b" and segmenter.fingerprint()["checkpoint_sha256"] == "in-memory"
    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as reader:
        coords = _grid(0, 0, 5, 3, 256)
        slide = SlideInput("cmu", coords, 256, reader.dimensions, [(0, 0, 1400, 900)], reader=reader)
        seg, masks = segmenter.segment(slide)
    assert masks, "the generator returned no mask with every filter off"
    assert all(m.frame == Frame(0, 0, 700, 450, 2.0) and m.mask.dtype == bool for m in masks)
    assert seg.n_tiles == 15 and set(seg.pairs[:, 0]) == set(range(15))
    in_segments = seg.pairs[seg.pairs[:, 1] != seg.unsegmented]
    areas = {m.area for m in masks}
    assert set(seg.group_area[in_segments[:, 1]]) <= areas


@pytest.mark.parametrize("checkpoint", [None, "/nonexistent/sam_vit_l.pth"])
def test_missing_checkpoint_names_the_download(checkpoint):
    with pytest.raises(MissingCheckpoint, match="sam_vit_l_0b3195.pth") as err:
        build_segmenter("sam:vit_l", {"sam": {"checkpoint": checkpoint}})
    assert CHECKPOINT_URLS["vit_l"] in str(err.value) and "segment.sam.checkpoint" in str(err.value)


def test_unknown_segmenter_and_variant():
    with pytest.raises(KeyError, match="sam:vit_b"):
        build_segmenter("watershed")
    with pytest.raises(ValueError, match="vit_b"):
        build_segmenter("sam:vit_x")
    with pytest.raises(ValueError, match="no variants"):
        build_segmenter("slic:fast")


def test_sam_frame_without_any_mask_is_empty_not_an_error():
    """segment-anything's cross-crop NMS indexes an empty box tensor when no crop kept a mask (seen with random
    weights and the paper's thresholds on CMU-1, benchmarks/sammil_costs.py); that frame has no regions."""
    import torch
    from torchvision.ops import box_area

    from slidemil.segmenters.sam import generate_masks

    class Generator:
        def __init__(self, boxes):
            self.boxes = boxes

        def generate(self, image):
            return [{"area": float(a)} for a in box_area(self.boxes)]  # the failing call inside SAM

    assert generate_masks(Generator(torch.zeros((0,))), None) == []
    assert generate_masks(Generator(torch.tensor([[0.0, 0.0, 2.0, 3.0]])), None) == [{"area": 6.0}]
    with pytest.raises(IndexError):
        generate_masks(type("G", (), {"generate": lambda self, image: [][1]})(), None)
