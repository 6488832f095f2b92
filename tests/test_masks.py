"""The one mask convention: polygon rasterisation by pixel centre (boundary in), coverage by area, and the
tissue mask the heatmaps stage builds from the tile stage's GeoJSON equal to the one serving builds."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from slidemil.data.tile_batch import SlideJob, TileOutputs, tile_one
from slidemil.slides.backends import open_slide
from slidemil.slides.masks import MaskCoverage, rasterize_polygons, to_mask_px
from slidemil.slides.tiling import TilingParams
from slidemil.slides.tissue import TissueParams, segment_tissue
from slidemil.slides.tissue_qc import contours_to_geojson


def _fc(*polygons: list, multi: bool = False) -> dict:
    geoms = ([{"type": "MultiPolygon", "coordinates": list(polygons)}] if multi
             else [{"type": "Polygon", "coordinates": p} for p in polygons])
    return {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": g} for g in geoms]}


def _box(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def test_pixel_centres_in_level0():
    # pixel (i=2, j=3) at downsample 10 covers level-0 [30, 40) x [20, 30); its centre (35, 25) maps to (3, 2)
    np.testing.assert_allclose(to_mask_px([[35.0, 25.0], [30.0, 20.0]], 10), [[3.0, 2.0], [2.5, 1.5]])


@pytest.mark.parametrize(("ring", "expected"), [
    (_box(0, 0, 100, 50), 50),  # edges on pixel edges: exactly the 10 x 5 pixels inside
    (_box(5, 5, 95, 45), 50),  # edges through pixel centres: those centres are in (boundary-inclusive)
    (_box(0, 0, 100, 50)[::-1], 50),  # orientation does not matter
    (_box(-40, -40, 40, 40), 16),  # clipped to the mask: centres 5, 15, 25, 35 on each axis
    ([[0, 0], [100, 0], [0, 100]], 55),  # unclosed ring; centres on the hypotenuse count: 45 inside + 10 on it
    (_box(12, 12, 18, 18), 1),  # smaller than a pixel but around its centre (15, 15)
    (_box(11, 11, 14, 14), 0),  # smaller than a pixel and missing its centre
])
def test_known_polygons_give_exact_pixel_counts(ring, expected):
    assert rasterize_polygons(_fc([ring]), (10, 12), 10.0).sum() == expected


def test_holes_are_cleared_and_pieces_in_holes_kept():
    outer, hole = _box(0, 0, 100, 100), _box(30, 30, 70, 70)
    with_hole = rasterize_polygons(_fc([outer, hole]), (10, 10), 10.0)
    assert with_hole.sum() == 100 - 16  # hole centres 35..65 are out
    assert not with_hole[3:7, 3:7].any() and with_hole[2, 2] and with_hole[7, 7]
    island = _box(40, 40, 60, 60)  # a separate piece lying in the hole: 2 x 2 pixels back
    assert rasterize_polygons(_fc([outer, hole], [island]), (10, 10), 10.0).sum() == 84 + 4
    multi = rasterize_polygons(_fc([outer, hole], [island], multi=True), (10, 10), 10.0)
    np.testing.assert_array_equal(multi, rasterize_polygons(_fc([outer, hole], [island]), (10, 10), 10.0))
    assert not rasterize_polygons({"type": "FeatureCollection", "features": []}, (4, 4), 1.0).any()


def test_fractional_downsample_and_rounded_vertices():
    """Vertices written with two decimals still hit the centres they were taken from."""
    ds = 5.794921875  # CMU-1-Small-Region's segmentation downsample
    centres = (np.array([[2, 3], [9, 3], [9, 7], [2, 7]]) + 0.5) * ds
    ring = [[round(x, 2), round(y, 2)] for x, y in centres]
    mask = rasterize_polygons(_fc([ring]), (12, 12), ds)
    assert mask.sum() == 8 * 5 and mask[3:8, 2:10].all()


def test_coverage_matches_rasterised_area():
    """A square tile over a rasterised polygon: coverage by area agrees with the pixel count it covers."""
    mask = rasterize_polygons(_fc([_box(0, 0, 60, 40)]), (10, 10), 10.0)  # 6 x 4 pixels
    cov = MaskCoverage(mask, 10.0)
    np.testing.assert_allclose(cov.squares([0, 50, 50, 0], [0, 0, 30, 30], 20), [1.0, 0.5, 0.25, 0.5])
    with pytest.raises(ValueError):
        cov.squares([0], [0, 1], 20)
    with pytest.raises(ValueError):
        MaskCoverage(mask, 0.0)


def test_stage_and_serving_build_the_same_tissue_mask(slides_dir, tmp_path):
    """The heatmaps stage rasterises the tile stage's GeoJSON file; serving rasterises its own segmentation."""
    path = slides_dir / "CMU-1-Small-Region.svs"
    outputs = TileOutputs(tmp_path / "tiles", tmp_path / "tissue", tmp_path / "qc")
    outputs.make()
    result = tile_one(SlideJob("cmu", str(path)), TilingParams(multiscale_factor=0), TissueParams(), outputs)
    assert result.status == "done", result.error
    with open_slide(path, slide_id="cmu") as reader:
        thumb, ds = reader.thumbnail(max_side=1024)
        seg = segment_tissue(reader, TissueParams())
    stage = rasterize_polygons(json.loads((tmp_path / "tissue" / "cmu.geojson").read_text()), thumb.shape[:2], ds)
    serving = rasterize_polygons(contours_to_geojson(seg, "cmu"), thumb.shape[:2], ds)
    np.testing.assert_array_equal(stage, serving)
    # and both are the segmentation itself, seen at the thumbnail's scale
    assert stage.shape == thumb.shape[:2] and 0.3 < stage.mean() < 0.45
    assert abs(stage.mean() - seg.tissue_fraction) < 0.01


def test_served_heatmap_is_the_stage_rendering(slides_dir, tmp_path):
    """End to end: serving's heatmap PNG equals the stage's rendering masked by the tile stage's GeoJSON.

    With serving's former mask (the segmentation raster resampled) 889 pixels of this slide differed.
    """
    import io

    import torch
    from PIL import Image

    from slidemil.bundle import ModelBundle
    from slidemil.encoders.registry import build_encoder
    from slidemil.evaluation.heatmap import HeatmapParams, render_score_layer
    from slidemil.inference import SlidePredictor

    path = slides_dir / "CMU-1-Small-Region.svs"
    tiling = TilingParams(multiscale_factor=0)
    enc = build_encoder("resnet18", "random", seed=0)
    cfg = {"in_dim": enc.feature_dim, "n_classes": 2}
    torch.manual_seed(0)
    encoder = {"name": "resnet18", "weights": "random", "seed": 0, "weights_id": enc.weights_id,
               "feature_dim": enc.feature_dim}
    bundle = ModelBundle.create("abmil", cfg, ["a", "b"], encoder, asdict(tiling), heatmap={"canvas_max_side": 1024})
    pred = SlidePredictor(bundle, device="cpu").predict(path, slide_id="cmu", top_k=0)
    served = np.asarray(Image.open(io.BytesIO(pred.heatmap_png)).convert("RGB"))

    outputs = TileOutputs(tmp_path / "tiles", tmp_path / "tissue", tmp_path / "qc")
    outputs.make()
    assert tile_one(SlideJob("cmu", str(path)), tiling, TissueParams(), outputs).status == "done"
    with open_slide(path, slide_id="cmu") as reader:
        thumb, ds = reader.thumbnail(max_side=1024)
        dims = reader.dimensions
    tissue = rasterize_polygons(json.loads((tmp_path / "tissue" / "cmu.geojson").read_text()), thumb.shape[:2], ds)
    params = HeatmapParams(canvas_max_side=1024)
    staged = render_score_layer(thumb, ds, pred.scored.primary, pred.coords, pred.level0_px, params,
                                tissue_mask=tissue, mask_downsample=ds, slide_dims=dims,
                                title=f"cmu | abmil | {pred.label}: attention", model="abmil")
    np.testing.assert_array_equal(staged, served)
