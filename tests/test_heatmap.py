"""Heatmaps, top-k tiles, QuPath GeoJSON export and localisation AUROC: behaviour and numbers."""

from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest
from shapely.geometry import shape

from slidemil.evaluation.heatmap import (
    HeatmapParams,
    blur_canvas,
    canvas_downsample,
    canvas_shape,
    colorbar_legend,
    ranked_indices,
    render_heatmap,
    save_top_tiles,
    score_canvas,
    to_percentiles,
    with_colorbar,
)
from slidemil.evaluation.localisation import localisation_auroc, tile_tumour_fraction
from slidemil.evaluation.tile_geojson import tiles_to_geojson
from slidemil.utils.atomic import write_png_atomic
from slidemil.utils.geojson import write_geojson


def _grid(width: int, height: int, side: int, stride: int | None = None) -> np.ndarray:
    stride = stride or side
    xs = np.arange(0, width - side + 1, stride)
    ys = np.arange(0, height - side + 1, stride)
    return np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2).astype(np.int64)


# ---- percentiles -------------------------------------------------------------------------------------
def test_percentiles_monotone_in_range_ties_equal():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 50, size=500).astype(float)  # many ties
    p = to_percentiles(scores)
    assert 0.0 <= p.min() < 0.05 and 0.95 < p.max() <= 1.0  # tied extremes share their average rank
    distinct = to_percentiles(rng.normal(size=100))
    assert distinct.min() == 0.0 and distinct.max() == 1.0
    order = np.argsort(scores, kind="stable")
    assert np.all(np.diff(p[order]) >= 0)  # monotone in the score
    for v in np.unique(scores):
        assert np.ptp(p[scores == v]) == 0.0  # ties share one value
    # strictly higher score -> strictly higher percentile
    a, b = np.argmin(scores), np.argmax(scores)
    assert p[a] < p[b]
    np.testing.assert_allclose(to_percentiles([3.0, 1.0, 2.0, 2.0, 5.0]), [0.75, 0.0, 0.375, 0.375, 1.0])


def test_percentiles_constant_single_and_nan():
    np.testing.assert_array_equal(to_percentiles(np.full(7, -2.5)), np.full(7, 0.5))
    np.testing.assert_array_equal(to_percentiles([4.2]), [0.5])
    p = to_percentiles([1.0, np.nan, 3.0])
    assert np.isnan(p[1]) and p[0] == 0.0 and p[2] == 1.0


# ---- canvas ------------------------------------------------------------------------------------------
def test_canvas_overlap_is_averaged_and_empty_is_nan():
    coords = np.array([[0, 0], [100, 0]])
    canvas = score_canvas(coords, 200, np.array([0.0, 1.0]), slide_dims=(1000, 600), downsample=1.0)
    assert canvas.shape == (600, 1000) and canvas.dtype == np.float32
    assert np.allclose(canvas[:200, :100], 0.0)
    assert np.allclose(canvas[:200, 100:200], 0.5)
    assert np.allclose(canvas[:200, 200:300], 1.0)
    assert np.isnan(canvas[:200, 300:]).all() and np.isnan(canvas[200:]).all()
    # same tiles on a 4x coarser canvas: footprints scale, the average is unchanged
    c4 = score_canvas(coords, 200, np.array([0.0, 1.0]), slide_dims=(1000, 600), downsample=4.0)
    assert c4.shape == (150, 250)
    assert np.allclose(c4[:50, :25], 0.0) and np.allclose(c4[:50, 25:50], 0.5) and np.allclose(c4[:50, 50:75], 1.0)
    assert np.isnan(c4[:50, 75:]).all()


def test_canvas_stays_thumbnail_sized_for_huge_slide():
    dims = (200_000, 150_000)
    ds = canvas_downsample(dims, 2048)
    h, w = canvas_shape(dims, ds)
    assert max(h, w) <= 2048 and (h, w) == (1536, 2048)
    coords = _grid(*dims, side=512, stride=512)[:50_000]
    values = np.random.default_rng(1).random(len(coords))
    t0 = time.perf_counter()
    canvas = score_canvas(coords, 512, to_percentiles(values), dims, ds)
    elapsed = time.perf_counter() - t0
    assert canvas.shape == (1536, 2048)
    # a guard against a per-tile full-canvas regression (minutes), not a benchmark: ~0.5 s on an idle core
    assert elapsed < 15.0, f"50k tiles took {elapsed:.2f} s"
    # a render from a small thumbnail with a smaller canvas cap: canvas <= cap, overlay = thumbnail shape
    thumb = np.full((768, 1024, 3), 230, np.uint8)
    res = render_heatmap(thumb, dims[0] / 1024, coords, 512, values, HeatmapParams(canvas_max_side=256),
                         slide_dims=dims)
    assert max(res.canvas.shape) <= 256 and res.downsample == pytest.approx(200_000 / 256)
    assert res.overlay_rgb.shape == thumb.shape


# ---- blur ---------------------------------------------------------------------------------------------
def test_blur_stays_in_range_and_does_not_bleed():
    # two 100-px tiles (0 and 1) side by side at x 100..300, nothing elsewhere on a 600x400 canvas
    canvas = score_canvas(np.array([[100, 100], [200, 100]]), 100, np.array([0.0, 1.0]), (600, 400), 1.0)
    sigma = 5.0
    blurred = blur_canvas(canvas, sigma)
    valid = np.isfinite(canvas)
    np.testing.assert_array_equal(np.isfinite(blurred), valid)  # coverage never grows (or shrinks)
    assert blurred[valid].min() >= 0.0 and blurred[valid].max() <= 1.0
    row = blurred[150]
    assert 0.3 < row[200] < 0.7  # the step is smoothed ...
    assert row[195] < row[200] < row[205]  # ... monotonically
    far = 5 * sigma
    assert np.allclose(row[100 : int(200 - far)], 0.0, atol=1e-6)  # values far from the step unchanged
    assert np.allclose(row[int(200 + far) : 300], 1.0, atol=1e-6)
    # an edge next to empty canvas is not dragged towards 0 (normalised blur)
    assert row[299] == pytest.approx(1.0, abs=1e-5)


# ---- tissue masking and blending ----------------------------------------------------------------------
def test_overlay_outside_tissue_is_the_plain_thumbnail():
    rng = np.random.default_rng(2)
    thumb = rng.integers(150, 250, size=(200, 300, 3), dtype=np.uint8)
    thumb_ds = 2.0  # slide is 600 x 400 level-0 px
    coords = _grid(600, 400, side=50)
    scores = rng.normal(size=len(coords))
    mask = np.zeros((100, 150), bool)  # tissue mask at 4 level-0 px per px: left half is tissue
    mask[:, :75] = True
    res = render_heatmap(thumb, thumb_ds, coords, 50, scores, HeatmapParams(alpha=0.6), tissue_mask=mask,
                         mask_downsample=4.0)
    assert res.overlay_rgb.shape == thumb.shape and res.overlay_rgb.dtype == np.uint8
    np.testing.assert_array_equal(res.overlay_rgb[:, 150:], thumb[:, 150:])  # right half: untouched
    assert np.isnan(res.canvas[:, 150:]).all() and np.isfinite(res.canvas[:, :150]).all()
    changed = np.any(res.overlay_rgb[:, :150] != thumb[:, :150], axis=-1).mean()
    assert changed > 0.95  # left half: coloured
    # without the mask, everything covered by tiles is coloured
    res2 = render_heatmap(thumb, thumb_ds, coords, 50, scores, HeatmapParams(tissue_masked=False),
                          tissue_mask=mask, mask_downsample=4.0)
    assert np.any(res2.overlay_rgb[:, 150:] != thumb[:, 150:], axis=-1).mean() > 0.95
    # alpha 0 -> the thumbnail itself
    res0 = render_heatmap(thumb, thumb_ds, coords, 50, scores, HeatmapParams(alpha=0.0))
    np.testing.assert_array_equal(res0.overlay_rgb, thumb)


def test_colorbar_and_png(tmp_path):
    bar = colorbar_legend("jet", height=100, width=10, border=0)
    assert bar.shape == (100, 10, 3)
    assert bar[0, 0, 0] > 100 and bar[0, 0, 2] < 50  # top = high = red in jet
    assert bar[-1, 0, 2] > 100 and bar[-1, 0, 0] < 50  # bottom = low = blue
    img = with_colorbar(np.zeros((50, 80, 3), np.uint8), "viridis")
    assert img.shape[0] == 50 and img.shape[1] > 80
    path = write_png_atomic(tmp_path / "x.png", img)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, img)
    assert not list(tmp_path.glob(".*.tmp"))


def test_ranked_indices_order_and_ties():
    s = np.array([0.2, 0.9, np.nan, 0.9, -1.0])
    np.testing.assert_array_equal(ranked_indices(s, 3), [1, 3, 0])
    np.testing.assert_array_equal(ranked_indices(s, 2, bottom=True), [4, 0])
    assert len(ranked_indices(s, 10)) == 4  # NaN never ranked


# ---- real slide -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cmu_slide(slides_dir):
    from slidemil.slides.backends import open_slide

    path = slides_dir / "CMU-1-Small-Region.svs"
    if not path.exists():
        pytest.skip(f"{path} not found")
    reader = open_slide(path)
    yield reader
    reader.close()


def test_real_slide_heatmap_top_tiles_and_geojson(cmu_slide, tmp_path):
    reader = cmu_slide
    geometry = reader.tile_geometry(224, 0.5)
    side = geometry.level0_px
    width, height = reader.dimensions
    coords = _grid(width, height, side)
    thumb, ds = reader.thumbnail(1024)
    assert max(thumb.shape[:2]) <= 1024

    # score = darkness of each tile in the thumbnail (tissue dark, glass bright)
    gray = thumb.astype(np.float32).mean(axis=2)
    scores = np.array([
        255.0 - gray[int(y / ds) : int((y + side) / ds), int(x / ds) : int((x + side) / ds)].mean()
        for x, y in coords
    ])
    hsv = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)
    tissue = hsv[..., 1] > 20
    res = render_heatmap(thumb, ds, coords, side, scores, HeatmapParams(blur_sigma_px=4), tissue_mask=tissue,
                         mask_downsample=ds, slide_dims=reader.dimensions)
    assert res.overlay_rgb.shape == thumb.shape
    assert res.downsample == pytest.approx(ds)
    np.testing.assert_array_equal(res.overlay_rgb[~tissue], thumb[~tissue])
    coloured = np.any(res.overlay_rgb != thumb, axis=-1)
    assert coloured[tissue].mean() > 0.8  # the grid leaves only the bottom/right remainder uncovered
    write_png_atomic(tmp_path / "overlay.png", with_colorbar(res.overlay_rgb, "jet"))

    top = save_top_tiles(reader, coords, geometry, scores, 3, tmp_path / "tiles", "cmu")
    bottom = save_top_tiles(reader, coords, geometry, scores, 2, tmp_path / "tiles", "cmu", bottom=True)
    assert [r["rank"] for r in top] == [1, 2, 3]
    assert [r["score"] for r in top] == sorted(scores)[::-1][:3]
    assert [r["score"] for r in bottom] == sorted(scores)[:2]
    for rec in top + bottom:
        img = cv2.cvtColor(cv2.imread(rec["path"]), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(img, reader.read_tile((rec["x"], rec["y"]), geometry))
        assert f"_x{rec['x']}_y{rec['y']}" in rec["path"]
    assert "_top001_" in top[0]["path"] and "_bottom001_" in bottom[0]["path"]

    pct = to_percentiles(scores).astype(np.float32)
    fc = tiles_to_geojson(coords, side, {"attention": scores, "percentile": pct}, "CMU-1-Small-Region",
                          classification="Tumor", class_colors={"Tumor": (200, 0, 0)})
    path = write_geojson(tmp_path / "tiles.geojson", fc)
    back = json.loads(path.read_text())
    assert back["type"] == "FeatureCollection" and len(back["features"]) == len(coords)
    ids = {f["id"] for f in back["features"]}
    assert len(ids) == len(coords)
    for i, feat in enumerate(back["features"]):
        ring = feat["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) == 5
        poly = shape(feat["geometry"])
        assert poly.is_valid and poly.area == side * side
        assert poly.bounds == (coords[i, 0], coords[i, 1], coords[i, 0] + side, coords[i, 1] + side)
        props = feat["properties"]
        assert props["objectType"] == "tile"
        assert props["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
        assert props["measurements"]["attention"] == scores[i]
        assert props["measurements"]["percentile"] == float(pct[i])


def test_geojson_skips_nan_and_validates():
    fc = tiles_to_geojson(np.array([[0, 0], [10, 0]]), 10, {"a": np.array([1.5, np.nan])}, "s")
    assert fc["features"][0]["properties"]["measurements"] == {"a": 1.5}
    assert fc["features"][1]["properties"]["measurements"] == {}
    assert "classification" not in fc["features"][0]["properties"]
    json.dumps(fc, allow_nan=False)  # strict JSON
    with pytest.raises(ValueError):
        tiles_to_geojson(np.zeros((2, 2)), 10, {"a": np.zeros(3)}, "s")
    with pytest.raises(ValueError):
        tiles_to_geojson(np.zeros((2, 2)), 10, {"a": np.zeros(2)}, "s", classification=["x"])


# ---- localisation -----------------------------------------------------------------------------------
def test_tumour_fraction_is_exact_area():
    mask = np.zeros((100, 100), bool)  # 4 level-0 px per mask px -> slide 400 x 400
    mask[:, :50] = True  # tumour: level-0 x < 200
    coords = np.array([[0, 0], [300, 0], [180, 0], [190, 40], [390, 390]])
    f = tile_tumour_fraction(coords, 40, mask, 4.0)
    # inside, outside, straddling x=200 by 20/40, by 10/40 (non-integer mask px), half beyond the slide
    np.testing.assert_allclose(f, [1.0, 0.0, 0.5, 0.25, 0.0], atol=1e-12)
    f2 = tile_tumour_fraction(np.array([[-20, 0]]), 40, mask, 4.0)
    np.testing.assert_allclose(f2, [0.5])  # the part beyond the slide counts as not tumour


def test_localisation_auroc_synthetic():
    rng = np.random.default_rng(7)
    dims = (2000, 2000)
    ds = 8.0
    mh, mw = int(dims[1] / ds), int(dims[0] / ds)
    yy, xx = np.mgrid[:mh, :mw]
    mask = (xx - 80) ** 2 + (yy - 140) ** 2 < 55**2  # a disc of tumour
    coords = _grid(*dims, side=100, stride=50)
    frac = tile_tumour_fraction(coords, 100, mask, ds)
    labels = frac >= 0.5
    assert 0.05 < labels.mean() < 0.5
    good = localisation_auroc(frac + rng.normal(0, 0.1, len(frac)), frac)
    assert good is not None and good > 0.95
    rand = localisation_auroc(rng.random(len(frac)), frac)
    assert rand is not None and abs(rand - 0.5) < 0.1
    assert localisation_auroc(rng.random(10), np.zeros(10)) is None
    assert localisation_auroc(rng.random(10), np.ones(10)) is None


# ---- score layers (the method contract's explanations) ---------------------------------------------------
def _layer(values, kind):
    from slidemil.methods import ScoreLayer

    return ScoreLayer("score", "tiles", np.asarray(values, dtype=float), kind, "tumour")


def test_score_layers_relative_vs_absolute_scale():
    from slidemil.evaluation.heatmap import legend_labels, render_score_layer

    thumb = np.full((40, 60, 3), 200, np.uint8)
    coords = np.array([[0, 0], [20, 0], [40, 0]])
    params = HeatmapParams(alpha=1.0, cmap="viridis")

    def paint(values, kind):
        img = render_score_layer(thumb, 1.0, _layer(values, kind), coords, 20, params)
        head = img.shape[0] - thumb.shape[0]
        return img[head + 5, 5], img  # a pixel inside the first tile

    low, img = paint([0.2, 0.2, 0.2], "probability")
    high, _ = paint([0.8, 0.8, 0.8], "probability")
    assert not np.array_equal(low, high)  # probabilities keep their absolute value
    rel_low, _ = paint([0.2, 0.2, 0.2], "attention")
    rel_high, _ = paint([0.8, 0.8, 0.8], "attention")
    assert np.array_equal(rel_low, rel_high)  # relative scores: a constant is the 50th percentile either way
    assert img.shape[0] > thumb.shape[0] and img.shape[1] > thumb.shape[1]  # title line and legend strip
    assert (img[: img.shape[0] - thumb.shape[0]] < 100).any()  # the title is drawn
    assert legend_labels(_layer([1], "probability")) == ("score (tumour), probability", "0.0", "1.0")
    assert legend_labels(_layer([1], "contribution"))[0] == "score (tumour), within-slide percentile"


def test_legend_has_ticks_caption_and_model():
    """Five labelled ticks on the bar (each a short black mark beside it), a second header line naming the
    scale and the model, and the same canvas with and without it."""
    from slidemil.evaluation.heatmap import layer_legend, legend_caption, legend_ticks, with_legend

    overlay = np.full((300, 400, 3), 200, np.uint8)
    layer = _layer([1], "attention")
    assert legend_ticks(layer) == ["0", "25", "50", "75", "100"]
    assert legend_ticks(_layer([1], "probability")) == ["0.00", "0.25", "0.50", "0.75", "1.00"]
    assert legend_caption(layer, "clam_sb fold 1") == ("colour: score (tumour), within-slide percentile | "
                                                       "model: clam_sb fold 1")
    plain = with_legend(overlay, "viridis", "t", "0", "100")
    full = layer_legend(overlay, "viridis", layer, "s1 | clam_sb fold 1 | tumour: score", "clam_sb fold 1")
    head_plain, head_full = plain.shape[0] - 300, full.shape[0] - 300
    assert head_full == 2 * head_plain  # title + caption lines
    assert (full[head_plain:head_full] < 100).any()  # the caption line is drawn
    assert np.array_equal(full[head_full:, :400], overlay)
    bar_w = max(8, min(32, 400 // 40))
    tick_col = full[head_full:, 400 + 8 + bar_w + 1]  # just right of the bar: the tick marks
    assert (tick_col.max(axis=1) == 0).sum() == 5


def test_blur_tiles_smooths_in_tile_units():
    """blur_tiles is sigma in tile widths: the same smoothing whatever the canvas scale, inside the tiles only."""
    coords = np.array([[x, y] for y in range(0, 80, 20) for x in range(0, 80, 20)])
    scores = np.arange(len(coords), dtype=float)
    thumb = np.full((80, 80, 3), 128, np.uint8)
    sharp = render_heatmap(thumb, 1.0, coords, 20, scores, HeatmapParams(alpha=1.0, cmap="viridis")).canvas
    soft = render_heatmap(thumb, 1.0, coords, 20, scores, HeatmapParams(alpha=1.0, cmap="viridis",
                                                                       blur_tiles=0.5)).canvas
    same = render_heatmap(thumb, 1.0, coords, 20, scores, HeatmapParams(alpha=1.0, cmap="viridis",
                                                                       blur_sigma_px=10.0)).canvas
    assert len(np.unique(sharp)) == 16 and len(np.unique(soft)) > 100  # blocks vs a gradient
    np.testing.assert_allclose(soft, same, atol=1e-6)  # 0.5 tile of 20 px = sigma 10 px
    with pytest.raises(ValueError, match="blur_tiles"):
        HeatmapParams(blur_tiles=-1)


def test_mean_pool_bundle_serves_a_heatmap(slides_dir):
    """A pooling champion explains with tile contributions: heatmap, GeoJSON measurement and top tiles."""
    import io
    import json as _json

    import torch
    from PIL import Image

    from slidemil.bundle import ModelBundle
    from slidemil.encoders.registry import build_encoder
    from slidemil.inference import SlidePredictor

    enc = build_encoder("resnet18", "random", seed=0)
    torch.manual_seed(0)
    bundle = ModelBundle.create("mean_pool", {"in_dim": enc.feature_dim, "n_classes": 2}, ["a", "b"],
                                {"name": "resnet18", "weights": "random", "seed": 0, "weights_id": enc.weights_id,
                                 "feature_dim": enc.feature_dim},
                                {"tile_px": 224, "target_mpp": 1.0, "multiscale_factor": 0},
                                heatmap={"canvas_max_side": 512})
    pred = SlidePredictor(bundle, device="cpu").predict(slides_dir / "CMU-1-Small-Region.svs", top_k=3)
    assert pred.heatmap_png is not None and pred.scored.primary.kind == "contribution"
    img = np.asarray(Image.open(io.BytesIO(pred.heatmap_png)))
    assert img.ndim == 3 and min(img.shape[:2]) > 50
    props = pred.geojson["features"][0]["properties"]
    assert "contribution" in _json.dumps(props)
    assert len(pred.top_tiles) == 3 and pred.top_tiles[0]["score"] >= pred.top_tiles[-1]["score"]
    assert np.isfinite(pred.tile_scores).all() and len(pred.tile_scores) == pred.n_tiles


def test_wide_blur_runs_shrunk_and_matches_the_full_resolution_blur():
    """A tile-wide sigma is computed on a shrunk canvas (the cost no longer grows with sigma); the result stays
    within 0.01 of the full-resolution normalised blur on a 0-1 map with a hole."""
    import cv2

    from slidemil.evaluation.heatmap import blur_canvas

    rng = np.random.default_rng(0)
    canvas = np.kron(rng.random((12, 16)), np.ones((128, 128))).astype(np.float32)
    canvas[:300, :300] = np.nan
    valid = np.isfinite(canvas)
    for sigma in (40.0, 75.0):
        out = blur_canvas(canvas, sigma)
        num = cv2.GaussianBlur(np.where(valid, canvas, 0).astype(np.float32), (0, 0), sigma,
                               borderType=cv2.BORDER_REFLECT)
        den = cv2.GaussianBlur(valid.astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        assert np.array_equal(np.isfinite(out), valid)  # never paints outside the scored area
        assert np.abs(out[valid] - np.clip(num[valid] / den[valid], 0, 1)).max() < 0.01
