"""Tissue segmentation on real tissue: QC tiles (tissue vs glass vs ink), real slides, overrides, coverage, GeoJSON."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from slidemil.slides.backends import open_slide
from slidemil.slides.masks import rasterize_polygons
from slidemil.slides.tissue import (
    TissueParams,
    TissueSegmentation,
    load_overrides,
    segment_tissue,
    tissue_mask_from_rgb,
)
from slidemil.slides.tissue_qc import contours_to_geojson, draw_qc
from slidemil.utils.atomic import write_png_atomic

# A QC tile counts as tissue when >= 25% of its pixels are in the mask. The mask is pixel-level, so fat
# vacuoles and lumens are not tissue: fatty / loose tissue tiles score 0.38-0.67 and glass or ink-only tiles
# stay under 0.08 (measured), 0.25 sits in the gap with room on both sides.
TISSUE_FRACTION = 0.25
TILE_PARAMS = TissueParams(a_t=0.0, a_h=0.0)  # a single tile: no minimum piece or hole size
NO_PEN = TissueParams(a_t=0.0, a_h=0.0, filter_pen=False)

# Every file in tiles_tissue_qc, labelled by eye (the nuclei / liver / lung / IHC names do not say).
TISSUE = {
    "tissue-level0-4302-10273-4814-10785", "tissue-level0-7352-11762-7864-12274",
    "tissue-level2-1784-6289-5880-10386", "tissue-level2-3000-7666-7096-11763",
    "tissue-level2-4640-4649-8736-8746", "tissue-level2-4760-5241-8856-9338",
    "high-nuclei-score-level0",  # dense tumour, whole tile
    "medium-nuclei-score-level0", "medium-nuclei-score-level1-2",  # stroma / spindle cells, whole tile
    "medium-nuclei-score-level1",  # vessel wall + loose tissue + red blood cells, glass at the bottom edge
    "medium-nuclei-score-level2",  # cellular tissue, glass in the lower-right corner
    "very-low-nuclei-score-level0",  # homogeneous eosinophilic material, whole tile
    "low-nuclei-score-level0", "low-nuclei-score-level1",  # adipose / loose tissue across the tile
    "tcga-lung-rgb",  # tumour cells in stroma
    "liver-level2-10907-7808-11707-8608",  # whole tile
    "liver-level2-57138-8209-57938-9009",  # tissue above a glass strip (~70%)
    "kidney-ihc-level0-310-500-360-530", "kidney-ihc-level0-340-520-390-550",
    "kidney-ihc-level0-350-530-360-540",  # IHC, haematoxylin-blue: must not be taken for blue ink
    "high-nuclei-score-red-pen-level1",  # tumour with a red ink smear over ~10%
    "medium-nuclei-score-green-pen-level1",  # green ink over the top half, tissue below
}
BACKGROUND = {
    "no-tissue", "no-tissue2", "almost-white-1", "almost-white-ihc",
    "almost-white-2",  # glass with a tiny tissue edge in the top-right corner (~7%)
    "no-tissue-line",  # grey glass with a black line
    "no-tissue-red-pen", "no-tissue-green-pen",  # ink only
    "liver-level2-38626-13514-39426-14315",  # blank glass
}
# Mostly glass with a strip of tissue: no yes/no answer, the fraction must match the eye's estimate.
PARTIAL = {
    "high-nuclei-score-level2": (0.05, 0.30),  # tissue along the top edge, ~15%
    "liver-level2-20914-13715-21714-14515": (0.10, 0.30),  # tissue strip at the top, ~20%
    "kidney-ihc-level0-330-480-380-510": (0.25, 0.50),  # tissue in the lower ~40%
}
# Fat with red ink over its lower right; the fat vacuoles make its pixel fraction low either way.
INK_OVER_FAT = "very-low-nuclei-score-red-pen-level1"
# Pen-free boxes (rows, cols) chosen by eye in the tiles with ink over tissue
PEN_FREE_BOX = {
    "high-nuclei-score-red-pen-level1": (slice(300, 512), slice(0, 300)),
    "medium-nuclei-score-green-pen-level1": (slice(340, 512), slice(150, 512)),
    INK_OVER_FAT: (slice(0, 200), slice(0, 300)),
}


def _rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def qc_fractions(shared_data) -> dict[str, tuple[float, float]]:
    """{tile: (fraction with the pen filter, fraction without)} for every QC tile."""
    out = {}
    for path in sorted((shared_data / "tiles_tissue_qc").glob("*.png")):
        rgb = _rgb(path)
        out[path.stem] = (float(tissue_mask_from_rgb(rgb, TILE_PARAMS).mean()),
                          float(tissue_mask_from_rgb(rgb, NO_PEN).mean()))
    return out


def test_every_qc_tile_is_labelled(qc_fractions):
    labelled = TISSUE | BACKGROUND | set(PARTIAL) | {INK_OVER_FAT}
    assert set(qc_fractions) == labelled, set(qc_fractions) ^ labelled


def test_qc_tiles_tissue_background_and_ink(qc_fractions):
    expected = {name: True for name in TISSUE} | {name: False for name in BACKGROUND}
    wrong = {n: round(qc_fractions[n][0], 3) for n, want in expected.items()
             if (qc_fractions[n][0] >= TISSUE_FRACTION) != want}
    accuracy = 1 - len(wrong) / len(expected)
    print(f"tissue QC accuracy {accuracy:.3f} over {len(expected)} tiles; "
          f"min tissue {min(qc_fractions[n][0] for n in TISSUE):.3f}, "
          f"max background {max(qc_fractions[n][0] for n in BACKGROUND):.3f}")
    assert not wrong, wrong
    # glass is empty, ink-only tiles are (almost) empty
    for name in ("almost-white-1", "no-tissue", "no-tissue-green-pen", "liver-level2-38626-13514-39426-14315"):
        assert qc_fractions[name][0] < 0.005, name
    assert qc_fractions["no-tissue-red-pen"][0] < 0.1
    for name, (lo, hi) in PARTIAL.items():
        assert lo <= qc_fractions[name][0] <= hi, (name, qc_fractions[name][0])


def test_pen_filter_removes_ink_and_keeps_tissue(shared_data, qc_fractions):
    # without the filter, ink is "tissue"; with it, it is gone
    for name in ("no-tissue-green-pen", "no-tissue-red-pen"):
        with_filter, without = qc_fractions[name]
        assert without > 0.7 and with_filter < 0.1, (name, with_filter, without)
    assert qc_fractions[INK_OVER_FAT][1] > 0.4 > 0.1 > qc_fractions[INK_OVER_FAT][0]
    # the filter costs nothing on ink-free tissue: H&E eosin, red blood cells and IHC blue are not ink
    for name in TISSUE - set(PEN_FREE_BOX):
        with_filter, without = qc_fractions[name]
        assert with_filter >= without - 0.01, (name, with_filter, without)
    # tissue next to the ink is kept where there is no ink
    for name, box in PEN_FREE_BOX.items():
        rgb = _rgb(shared_data / "tiles_tissue_qc" / f"{name}.png")
        kept = tissue_mask_from_rgb(rgb, TILE_PARAMS)[box].mean()
        unfiltered = tissue_mask_from_rgb(rgb, NO_PEN)[box].mean()
        assert kept >= 0.98 * unfiltered and kept > 0.03, (name, kept, unfiltered)


def test_cmu_tissue_fraction_and_qc_image(slides_dir, tmp_path):
    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as reader:
        seg = segment_tissue(reader, TissueParams())
        thumb, thumb_ds = reader.thumbnail(600)
    # A 2220 x 2967 slide: the mask keeps min_mask_side=512 px (downsample 5.8), not 64x (a 46-px mask)
    assert seg.mask.shape == (512, 383) and seg.downsample == pytest.approx(2967 / 512)
    # By eye on the QC image (/tmp QC PNG): one skin strip, top to bottom, with its thin left-hand fragment
    # attached, about 35-40% of the frame; measured 0.375. The cyan debris to its right is not tissue.
    assert 0.33 <= seg.tissue_fraction <= 0.42
    assert len(seg.contours) == 1
    qc = draw_qc(thumb, thumb_ds, seg)
    assert qc.shape == thumb.shape and not np.shares_memory(qc, thumb)
    green = (qc[..., 1] > 150) & (qc[..., 0] < 100) & (qc[..., 2] < 100)
    assert green.sum() > 500  # the contour is drawn
    write_png_atomic(tmp_path / "qc" / "cmu.png", qc)
    assert cv2.imread(str(tmp_path / "qc" / "cmu.png")).shape == qc.shape
    assert [p.name for p in (tmp_path / "qc").iterdir()] == ["cmu.png"]  # no temp file left


def test_tcga_segments_from_a_coarser_level(slides_dir):
    """Two-level slide: segmentation reads level 1 only, never level 0."""
    with open_slide(slides_dir / "TCGA-CR-7395-01A-01-TS1.svs") as reader:
        levels: list[int] = []
        original = reader.read_region

        def recording(location, level, size):
            levels.append(level)
            return original(location, level, size)

        reader.read_region = recording
        seg = segment_tissue(reader, TissueParams())
    assert levels and set(levels) == {1}
    # By eye: one large frozen-section piece filling about two thirds of the frame; measured 0.638
    assert 0.58 <= seg.tissue_fraction <= 0.70 and len(seg.contours) == 1


def test_dicom_pen_marks_are_not_tissue(slides_dir):
    with open_slide(slides_dir / "small_HE_dicom.dcm") as reader:
        seg = segment_tissue(reader, TissueParams())
        thumb, _ = reader.thumbnail(max_side=max(seg.mask.shape))
        no_filter = segment_tissue(reader, TissueParams(filter_pen=False))
    thumb = cv2.resize(thumb, seg.mask.shape[::-1])
    hsv = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)
    green_ink = (hsv[..., 0] > 60) & (hsv[..., 0] < 95) & (hsv[..., 1] > 80)
    assert green_ink.sum() > 500  # the slide has a thick green pen loop
    assert (seg.mask & green_ink).sum() / green_ink.sum() < 0.05
    assert (no_filter.mask & green_ink).sum() / green_ink.sum() > 0.5
    # measured 0.419 with the filter (tissue only) vs 0.516 without
    assert 0.36 <= seg.tissue_fraction <= 0.46


def test_overrides_change_only_their_slide(tmp_path, slides_dir):
    csv = tmp_path / "overrides.csv"
    csv.write_text("slide_id,sat_threshold,use_otsu\nCMU-1-Small-Region,60,\nother,,true\n")
    overrides = load_overrides(csv)
    assert overrides == {"CMU-1-Small-Region": {"sat_threshold": "60"}, "other": {"use_otsu": "true"}}
    base = TissueParams()
    assert base.with_overrides(overrides["other"]) == TissueParams(use_otsu=True)  # empty cell = default
    results = {}
    for name in ("CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs"):
        with open_slide(slides_dir / name) as reader:
            params = base.with_overrides(overrides.get(reader.slide_id, {}))
            results[reader.slide_id] = (segment_tissue(reader, base).mask, segment_tissue(reader, params).mask)
    default, strict = results["CMU-1-Small-Region"]
    assert strict.sum() < 0.9 * default.sum()
    default, same = results["TCGA-CR-7395-01A-01-TS1"]
    assert np.array_equal(default, same)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("slide_id,sat_treshold\ncmu,3\n", "sat_treshold"),  # unknown column, named
        ("slide_id,sat_threshold\ncmu,8\nbad,abc\n", r"line 3 \(bad\), column sat_threshold"),
        ("slide_id,median_kernel\ncmu,6\n", "median_kernel must be odd"),
        ("slide_id,use_otsu\ncmu,maybe\n", "use_otsu"),
        ("slide_id,a_t\ncmu,1\ncmu,2\n", "appears twice"),
        ("sample,a_t\ncmu,1\n", "slide_id"),
    ],
)
def test_override_csv_errors(tmp_path, text, match):
    path = tmp_path / "o.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_overrides(path)


def test_with_overrides_parses_strings_and_rejects_unknown_keys():
    p = TissueParams().with_overrides({"a_t": "0.25", "max_n_holes": "3", "filter_pen": "false", "close_kernel": ""})
    assert (p.a_t, p.max_n_holes, p.filter_pen, p.close_kernel) == (0.25, 3, False, 4)
    with pytest.raises(ValueError, match="sat_treshold"):
        TissueParams().with_overrides({"sat_treshold": "3"})
    with pytest.raises(ValueError, match="max_n_holes"):
        TissueParams().with_overrides({"max_n_holes": "2.5"})


def test_coverage_exact_on_a_known_mask():
    mask = np.zeros((100, 100), bool)
    mask[20:60, 20:60] = True  # at downsample 4: level-0 square [80, 240)
    seg = TissueSegmentation(mask=mask, downsample=4.0, contours=[], slide_dims=(400, 400))
    xs = np.array([80, 160, 300, 160, 200, 82, 230])
    ys = np.array([80, 80, 300, 200, 80, 80, 80])
    # inside, inside, outside, half (y), half (x), inside (unaligned), 10 of 80 px inside (unaligned)
    np.testing.assert_allclose(seg.coverage(xs, ys, 80), [1, 1, 0, 0.5, 0.5, 1, 0.125], atol=1e-12)
    # smaller than one mask pixel: still exact
    np.testing.assert_allclose(seg.coverage(np.array([238.0, 100]), np.array([100.0, 100]), 2.0), [1, 1])
    np.testing.assert_allclose(seg.coverage(np.array([239.0]), np.array([100.0]), 2.0), [0.5])


def test_coverage_at_the_slide_edge_counts_outside_as_background():
    seg = TissueSegmentation(mask=np.ones((50, 50), bool), downsample=8.0, contours=[], slide_dims=(400, 400))
    cov = seg.coverage(np.array([360, 380, 400, -40, 360]), np.array([0, 0, 0, 0, 360]), 80)
    np.testing.assert_allclose(cov, [0.5, 0.25, 0.0, 0.5, 0.25], atol=1e-12)


def test_coverage_of_100k_tiles_is_fast():
    rng = np.random.default_rng(0)
    mask = rng.random((1500, 1500)) > 0.5
    seg = TissueSegmentation(mask=mask, downsample=64.0, contours=[], slide_dims=(96_000, 96_000))
    xs, ys = rng.integers(0, 96_000, 100_000), rng.integers(0, 96_000, 100_000)
    seg.coverage(xs[:10], ys[:10], 448)  # builds the summed-area table once
    start = time.perf_counter()
    cov = seg.coverage(xs, ys, 448)
    elapsed = time.perf_counter() - start
    assert cov.shape == (100_000,) and 0.4 < cov.mean() < 0.6
    assert elapsed < 0.5, elapsed
    # spot check against a brute-force sum on aligned tiles
    aligned = seg.coverage(np.array([640]), np.array([1280]), 640)[0]
    assert aligned == pytest.approx(mask[20:30, 10:20].mean())


def _synthetic_slide(tmp_path: Path) -> Path:
    """2000 x 1500 px glass with a pink tissue ring (one hole), a small speck and a green pen stroke."""
    rng = np.random.default_rng(1)
    img = np.full((1500, 2000, 3), 242, np.uint8)
    cv2.circle(img, (750, 750), 600, (214, 122, 170), -1)
    cv2.circle(img, (750, 750), 320, (242, 242, 242), -1)  # hole: 0.32 Mpx ~ 1.2 x 512^2 > a_h
    cv2.rectangle(img, (1700, 150), (1760, 210), (200, 110, 160), -1)  # 3.6k px speck < a_t
    cv2.line(img, (1420, 1300), (1950, 600), (40, 170, 130), 30)  # green ink on glass
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "synthetic.png"
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return path


def test_synthetic_slide_holes_specks_and_empty(tmp_path):
    with open_slide(_synthetic_slide(tmp_path), mpp=0.5) as reader:
        seg = segment_tissue(reader, TissueParams())
    assert len(seg.contours) == 1 and len(seg.contours[0]) == 2  # one piece, one hole; speck and ink gone
    expected = (np.pi * (600**2 - 320**2)) / (2000 * 1500)
    assert seg.tissue_fraction == pytest.approx(expected, rel=0.03)
    center = seg.coverage(np.array([650.0, 750 + 400]), np.array([650.0, 650]), 100)
    np.testing.assert_allclose(center, [0.0, 1.0])
    _assert_geojson_matches_mask(seg, "synthetic")
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((600, 800, 3), 245, np.uint8))
    with open_slide(blank, mpp=0.5) as reader:
        empty = segment_tissue(reader, TissueParams())
    assert empty.contours == [] and empty.tissue_fraction == 0.0 and not empty.mask.any()
    assert contours_to_geojson(empty, "blank") == {"type": "FeatureCollection", "features": []}
    assert empty.coverage(np.array([0]), np.array([0]), 100)[0] == 0.0


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "small_HE_dicom.dcm"])
def test_geojson_round_trip_reproduces_the_mask(slides_dir, name):
    with open_slide(slides_dir / name) as reader:
        seg = segment_tissue(reader, TissueParams())
    assert seg.contours
    _assert_geojson_matches_mask(seg, Path(name).stem)


def _assert_geojson_matches_mask(seg: TissueSegmentation, slide_id: str) -> None:
    fc = json.loads(json.dumps(contours_to_geojson(seg, slide_id)))
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == len(seg.contours)
    w, h = seg.slide_dims
    for feat in fc["features"]:
        assert feat["type"] == "Feature" and feat["geometry"]["type"] == "Polygon"
        assert feat["properties"]["classification"]["name"] == "Tissue"
        rings = feat["geometry"]["coordinates"]
        for k, ring in enumerate(rings):
            xy = np.asarray(ring, np.float64)
            assert len(ring) >= 4 and ring[0] == ring[-1]
            assert (xy[:, 0] >= 0).all() and (xy[:, 0] <= w).all() and (xy[:, 1] >= 0).all() and (xy[:, 1] <= h).all()
            x, y = xy[:, 0], xy[:, 1]
            signed = np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])
            assert (signed > 0) == (k == 0)  # outer rings one way, holes the other
    # vertices sit on the centres of the mask's boundary pixels, so the shared rasteriser gives the mask back
    np.testing.assert_array_equal(rasterize_polygons(fc, seg.mask.shape, seg.downsample), seg.mask)
