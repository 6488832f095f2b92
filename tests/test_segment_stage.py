"""The `segments` layer and the `segment` stage: round trip through the generic layer store, refusal of
memberships made for other tiles, resume-key skipping, a QC overlay, and the training source loading the layer
only when asked to."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from slidemil.methods import LayerSpec
from slidemil.segmenters import Segments
from slidemil.segmenters.layer import KIND, read_segments, segments_resume_key, write_segments
from slidemil.slides import open_slide
from slidemil.slides.tile_set import TileSetLayer
from slidemil.store import LayerError, SlideStore, tiles_digest, write_features, write_tile_sets
from slidemil.training.data import store_source


def _segments() -> Segments:
    return Segments(4, np.array([[0, 0], [1, 0], [1, 1], [2, 1], [3, 2]]), np.array([10.0, 40.0, 8.0]),
                    np.array([10.0, 10.0, 40.0, 8.0]), unsegmented=2)


def test_segments_layer_round_trip_and_digest_check(tmp_path):
    path = write_segments(tmp_path / "s.h5", _segments(), segmenter="kmeans", tiles_digest="abc", resume_key="k")
    back = read_segments(path, tiles_digest="abc")
    np.testing.assert_array_equal(back.pairs, _segments().pairs)
    np.testing.assert_array_equal(back.relative_area, [10, 10, 40, 8])
    assert back.unsegmented == 2 and back.n_tiles == 4
    with pytest.raises(LayerError, match="other tiles"):
        read_segments(path, tiles_digest="re-tiled")
    assert segments_resume_key({"id": "kmeans"}, "abc") != segments_resume_key({"id": "kmeans"}, "abd")
    assert segments_resume_key({"id": "kmeans"}, "abc", "f1") != segments_resume_key({"id": "kmeans"}, "abc", "f2")


def test_segments_refuse_tiles_without_group():
    with pytest.raises(ValueError, match="every tile"):
        Segments(3, np.array([[0, 0], [1, 0]]), np.array([5.0]), np.array([5.0, 5.0, 0.0]))


@pytest.fixture
def project(tmp_path, slides_dir):
    """A one-slide store over the real CMU-1 region: tiles, random features, a tissue contour, params."""
    slide = slides_dir / "CMU-1-Small-Region.svs"
    with open_slide(slide) as reader:
        geometry = reader.tile_geometry(224, reader.mpp)
    px = geometry.level0_px
    ys, xs = np.mgrid[0:6, 0:8]
    coords = (np.stack([xs.ravel(), ys.ravel()], 1) * px).astype(np.int64)
    tiles = TileSetLayer("tiles", "cmu", str(slide), coords, geometry, np.ones(len(coords), np.float32))
    write_tile_sets(tmp_path / "tiles" / "cmu.h5", [tiles], resume_key="t")
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(len(coords), 8)).astype(np.float32)
    feats[:16] += 5.0
    write_features(tmp_path / "features" / "cmu.h5", feats, coords,
                   {"slide_id": "cmu", "encoder": "e", "tiles_digest": tiles_digest(tiles)},
                   group_attrs={"tiles_digest": tiles_digest(tiles)}, resume_key="f1")
    ring = [[0, 0], [8 * px, 0], [8 * px, 6 * px], [0, 6 * px], [0, 0]]
    (tmp_path / "tissue").mkdir()
    (tmp_path / "tissue" / "cmu.geojson").write_text(json.dumps(
        {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                                                    "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    (tmp_path / "manifest.csv").write_text(f"slide_id,case_id,path,label\ncmu,c1,{slide},normal\n")
    params = {
        "validate": {"manifest_out": str(tmp_path / "manifest.csv")},
        "tile": {"tiles_dir": str(tmp_path / "tiles"), "tissue_dir": str(tmp_path / "tissue")},
        "features": {"out_dir": str(tmp_path / "features")},
        "segment": {"segmenter": "kmeans", "kmeans": {"n_clusters": 3, "seed": 0}, "slic": {"n_segments": 12},
                    "out_dir": str(tmp_path / "segments"), "qc_dir": str(tmp_path / "qc"), "qc_max_side": 512,
                    "summary": str(tmp_path / "segments.json")},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path, tiles


@pytest.mark.parametrize("segmenter", ["kmeans", "slic"])
def test_segment_stage_writes_layer_overlay_and_resumes(project, monkeypatch, segmenter):
    from pipelines import segment

    root, tiles = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["segment"]["segmenter"] = segmenter
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("SLIDEMIL_PARAMS", str(root / "params.yaml"))
    assert segment.main() == 0
    summary = json.loads((root / "segments.json").read_text())
    assert summary["segmenter"] == segmenter and summary["skipped"] == 0
    seg = read_segments(root / "segments" / "cmu.h5", tiles_digest=tiles_digest(tiles))
    assert seg.n_tiles == 48 and seg.n_segments >= 3
    if segmenter == "kmeans":  # the 16 shifted tiles form one cluster
        groups = [set(seg.pairs[seg.pairs[:, 1] == g, 0]) for g in range(seg.n_groups)]
        assert set(range(16)) in groups
    png = Image.open(root / "qc" / "cmu.png")
    assert max(png.size) <= 512 and png.mode == "RGB"

    assert segment.main() == 0  # same settings, tiles and features: skipped
    assert json.loads((root / "segments.json").read_text())["skipped"] == 1

    store = SlideStore(root / "tiles", root / "features", {KIND: root / "segments"})
    assert "segments" not in store_source(store).load("cmu").layers
    loaded = store_source(store, layers=[LayerSpec("segments")]).load("cmu").layers["segments"]
    np.testing.assert_array_equal(loaded.pairs, seg.pairs)


def test_training_inputs_ask_for_segments_only_when_a_method_needs_them():
    from pipelines.common import load_params
    from pipelines.training_inputs import extra_layers

    p = load_params()  # the demo's params.yaml trains sam_mil
    assert extra_layers(p) == [LayerSpec("segments")]
    p["train"]["models"], p["tune"]["space"]["methods"], p["heatmaps"]["models"] = ["abmil"], ["clam_sb"], ["abmil"]
    assert extra_layers(p) == []
    p["train"]["models"], p["heatmaps"]["model"] = ["abmil"], "sam_mil"
    assert extra_layers(p) == [LayerSpec("segments")]
