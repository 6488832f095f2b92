"""The heatmaps stage's ``segments`` record entry (SAM-MIL families only) and the dashboard's segment overlay."""

from __future__ import annotations

import numpy as np

from dashboard.heatmap_view import segment_colours, segments_rgba
from pipelines.heatmaps import segments_entry
from slidemil.methods import SlideData, TileSetView
from slidemil.methods.sammil import SamMILMethod
from slidemil.segmenters.segments import from_groups


def _slide() -> SlideData:
    coords = np.array([[0, 0], [224, 0], [448, 0], [0, 224]], dtype=np.int64)
    seg = from_groups(4, [np.array([0, 1]), np.array([1])], [50.0, 10.0], 1.0)  # tile 2, 3 unsegmented
    return SlideData("s", None, {"tiles": TileSetView(coords, 224)},
                     {"tiles": np.zeros((4, 8), np.float32)}, {"segments": seg})


def test_segments_entry_only_for_segment_methods():
    slide = _slide()
    entry = segments_entry(slide, SamMILMethod, "kmeans")
    assert entry["segmenter"] == "kmeans"
    assert entry["group"] == [0, 1, 2, 2]  # tile 1 is in both; its smallest segment (area 10) wins
    assert entry["group_area"] == [50.0, 10.0, 2.0] and entry["unsegmented"] == 2 and entry["n_segments"] == 2

    class Plain:
        required_layers = ()
    assert segments_entry(slide, Plain, "kmeans") is None


def test_segments_rgba_colours_tiles_by_group():
    coords = np.array([[0, 0], [224, 0], [448, 0]])
    rgba = segments_rgba((10, 20), coords, 224, 32.0, np.array([0, 1, 2]), unsegmented=2, alpha=0.5)
    colours = segment_colours(3, 2)
    assert tuple(rgba[2, 2, :3]) == tuple(colours[0]) and tuple(rgba[2, 9, :3]) == tuple(colours[1])
    assert tuple(rgba[2, 16, :3]) == (128, 128, 128)
    assert rgba[2, 2, 3] == 128 and rgba[9, 2, 3] == 0  # tiles 7 px tall; below them transparent
    assert len({tuple(c) for c in colours[:2]}) == 2
