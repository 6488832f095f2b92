"""The procedural H&E demo slides: readable pyramids, determinism, ground truth, morphology, scale, memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import openslide
import pandas as pd
import pytest
from skimage.draw import polygon as draw_polygon

from slidemil.demo.dataset import (
    MANIFEST_COLUMNS,
    SyntheticSlideSpec,
    generate_demo_dataset,
    generate_slide,
    render_region,
)

SRC = Path(__file__).resolve().parents[1] / "src"


# ---- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("demo")
    manifest = generate_demo_dataset(
        out,
        n_cases=6,
        slides_per_case=2,
        width_um=600,
        height_um=480,
        mpp_choices=(0.5, 0.25),
        seed=3,
        workers=1,
        progress=False,
    )
    return out, manifest


@pytest.fixture(scope="module")
def morphology_slides(tmp_path_factory) -> dict[str, tuple[Path, SyntheticSlideSpec]]:
    """One slide per label with a large tumour fraction, at 0.5 um/px, for nuclear measurements."""
    out = tmp_path_factory.mktemp("morph")
    slides = {}
    for i, label in enumerate(("normal", "subtype_a", "subtype_b")):
        spec = SyntheticSlideSpec(
            f"m_{label}",
            f"c{i}",
            label,
            2400,
            2000,
            0.5,
            seed=40 + i,
            tumour_fraction=0.0 if label == "normal" else 0.2,
        )
        slides[label] = (generate_slide(spec, out)["slide"], spec)
    return slides


def _read_level0(path: Path) -> np.ndarray:
    with openslide.OpenSlide(str(path)) as s:
        return np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))


# ---- file format ----------------------------------------------------------------------------------
def test_openslide_reads_pyramid_with_mpp_and_objective(tmp_path):
    spec = SyntheticSlideSpec("s1", "c1", "subtype_a", 2600, 2100, 0.5, seed=1, tumour_fraction=0.1)
    path = generate_slide(spec, tmp_path)["slide"]
    assert path.suffix == ".svs"
    with openslide.OpenSlide(str(path)) as s:
        assert s.properties["openslide.vendor"] == "aperio"
        assert s.dimensions == (2600, 2100)
        assert s.level_count >= 2
        assert s.level_dimensions[1] == (650, 525)
        assert s.level_downsamples[1] == pytest.approx(4.0, rel=1e-3)
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.5)
        assert float(s.properties["openslide.objective-power"]) == 20
        # the reduced level is the 4x4 average of level 0 (not a separately drawn image)
        lvl0 = np.asarray(s.read_region((1024, 1024), 0, (512, 512)).convert("RGB")).astype(np.float32)
        lvl1 = np.asarray(s.read_region((1024, 1024), 1, (128, 128)).convert("RGB")).astype(np.float32)
        small = cv2.resize(lvl0, (128, 128), interpolation=cv2.INTER_AREA)
        assert np.abs(small - lvl1).mean() < 6.0  # JPEG error only
        assert np.abs(small - np.roll(lvl1, 8, axis=1)).mean() > 12.0  # a misaligned level would not pass

    spec40 = SyntheticSlideSpec("s2", "c1", "normal", 1200, 1000, 0.25, seed=2)
    with openslide.OpenSlide(str(generate_slide(spec40, tmp_path)["slide"])) as s:
        assert float(s.properties["openslide.objective-power"]) == 40
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert s.level_count == 2  # 1200 px -> 300 px


def test_large_slides_get_more_levels():
    from slidemil.demo.svs_writer import pyramid_dimensions

    dims = pyramid_dimensions(50000, 40000)
    assert dims == [(50000, 40000), (12500, 10000), (3125, 2500), (782, 625)]
    assert len(pyramid_dimensions(2100, 900)) == 2


# ---- determinism ----------------------------------------------------------------------------------
def test_same_seed_same_pixels_different_seed_different(tmp_path):
    spec = SyntheticSlideSpec("d", "c", "subtype_b", 1500, 1300, 0.5, seed=7, tumour_fraction=0.15)
    a = _read_level0(generate_slide(spec, tmp_path / "a")["slide"])
    b = _read_level0(generate_slide(spec, tmp_path / "b")["slide"])
    assert np.array_equal(a, b)
    c = _read_level0(generate_slide(replace(spec, seed=8), tmp_path / "c")["slide"])
    assert np.abs(a.astype(int) - c).mean() > 10


def test_blocks_are_seamless():
    """A region rendered at once equals the same region assembled from smaller blocks, bit for bit."""
    spec = SyntheticSlideSpec("d", "c", "subtype_a", 3000, 2400, 0.5, seed=11, tumour_fraction=0.2)
    c = spec.scene().tumour.representative_point()
    x, y = int(c.x / 0.5) - 300, int(c.y / 0.5) - 300
    whole = render_region(spec, x, y, 600, 600)
    parts = np.zeros_like(whole)
    for dy in (0, 250):
        for dx in (0, 350):
            h, w = (250 if dy == 0 else 350), (350 if dx == 0 else 250)
            parts[dy : dy + h, dx : dx + w] = render_region(spec, x + dx, y + dy, w, h)
    assert np.array_equal(whole, parts)


# ---- dataset and ground truth ----------------------------------------------------------------------
def test_manifest_cases_labels_and_paths(demo):
    out, manifest = demo
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert pd.read_csv(out / "manifest.csv").shape == manifest.shape
    assert len(manifest) == 12 and manifest.case_id.nunique() == 6
    assert (manifest.groupby("case_id").label.nunique() == 1).all()  # one label per patient
    assert manifest.groupby("label").case_id.nunique().to_dict() == {
        "normal": 2,
        "subtype_a": 2,
        "subtype_b": 2,
    }
    for col in ("path", "tumour_geojson", "tumour_mask"):
        assert all((out / p).is_file() for p in manifest[col])
    assert set(manifest.mpp_written) <= {0.5, 0.25}
    assert (manifest.mask_downsample == 16).all()


def test_resume_skips_existing_slides(demo):
    out, manifest = demo
    first = out / manifest.path.iloc[0]
    mtime = first.stat().st_mtime_ns
    again = generate_demo_dataset(
        out,
        n_cases=6,
        slides_per_case=2,
        width_um=600,
        height_um=480,
        mpp_choices=(0.5, 0.25),
        seed=3,
        progress=False,
    )
    assert first.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(again, manifest)
    assert not list((out / "slides").glob(".*partial*"))


def _tissue_mask(thumb: np.ndarray) -> np.ndarray:
    """Image-based tissue estimate: any stain at all, with lumens and gaps closed."""
    od = -np.log(np.maximum(thumb.astype(np.float32), 1.0) / 242.0).sum(axis=2)
    tissue = (od > 0.12).astype(np.uint8)
    tissue = cv2.morphologyEx(tissue, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    return tissue.astype(bool)


def test_tumour_fraction_of_mask_matches_target(demo):
    out, manifest = demo
    tumour = manifest[manifest.label != "normal"]
    assert len(tumour) == 8
    for row in tumour.itertuples():
        mask = cv2.imread(str(out / row.tumour_mask), cv2.IMREAD_GRAYSCALE) > 0
        with openslide.OpenSlide(str(out / row.path)) as s:
            w, h = s.dimensions
            level = s.get_best_level_for_downsample(row.mask_downsample)
            thumb = np.asarray(s.read_region((0, 0), level, s.level_dimensions[level]).convert("RGB"))
        thumb = cv2.resize(thumb, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_AREA)
        tissue = _tissue_mask(thumb)
        measured = (mask & tissue).sum() / tissue.sum()
        assert 0.02 <= row.tumour_fraction <= 0.20
        assert measured == pytest.approx(row.tumour_fraction, abs=0.015 + 0.15 * row.tumour_fraction)
        assert (mask & ~tissue).sum() < 0.05 * mask.sum()  # tumour lies on tissue


def test_normal_has_empty_truth_and_mask_agrees_with_geojson(demo):
    out, manifest = demo
    for row in manifest.itertuples():
        gj = json.loads((out / row.tumour_geojson).read_text())
        mask = cv2.imread(str(out / row.tumour_mask), cv2.IMREAD_GRAYSCALE)
        assert gj["type"] == "FeatureCollection"
        assert set(np.unique(mask)) <= {0, 255}
        if row.label == "normal":
            assert gj["features"] == [] and mask.max() == 0
            continue
        assert gj["features"] and mask.max() == 255
        ds = row.mask_downsample
        raster = np.zeros(mask.shape, bool)
        for feat in gj["features"]:
            assert feat["geometry"]["type"] == "Polygon"
            assert feat["properties"]["classification"]["name"] == "Tumor"
            ring = np.asarray(feat["geometry"]["coordinates"][0]) / ds - 0.5  # level-0 px -> mask px centres
            rr, cc = draw_polygon(ring[:, 1], ring[:, 0], shape=mask.shape)
            raster[rr, cc] = True
        m = mask > 0
        iou = (raster & m).sum() / (raster | m).sum()
        print(f"{row.slide_id}: mask/GeoJSON IoU {iou:.4f} ({m.sum()} mask px)")
        assert iou > 0.95, f"{row.slide_id}: IoU {iou:.3f}"


# ---- morphology, not colour --------------------------------------------------------------------------
def _nuclear_stats(img: np.ndarray, region: np.ndarray, mpp: float) -> dict[str, float]:
    """Hematoxylin-dark pixels (red channel low) -> connected components inside ``region``."""
    dark = ((img[..., 0] < 150) & region).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA] * mpp**2
    areas = areas[areas > 4.0]  # ignore specks below 4 um^2
    region_um2 = region.sum() * mpp**2
    return {
        "mean_area_um2": float(areas.mean()),
        "nuclear_fraction": float(dark.sum() * mpp**2 / region_um2),
        "count_per_mm2": float(len(areas) / region_um2 * 1e6),
        "mean_rgb": img[region].mean(axis=0),
    }


def test_subtypes_differ_in_nuclear_morphology_not_colour(morphology_slides):
    stats = {}
    for label, (path, spec) in morphology_slides.items():
        img = _read_level0(path)
        scene = spec.scene()
        # away from region borders (15 um), so measurements are of one compartment
        region_geom = (scene.tissue if label == "normal" else scene.tumour).buffer(-15.0)
        region = np.zeros(img.shape[:2], np.uint8)
        for poly in getattr(region_geom, "geoms", [region_geom]):
            cv2.fillPoly(region, [np.round(np.asarray(poly.exterior.coords) / spec.mpp).astype(np.int32)], 1)
        stats[label] = _nuclear_stats(img, region.astype(bool), spec.mpp)
    a, b, n = stats["subtype_a"], stats["subtype_b"], stats["normal"]
    print({k: {m: np.round(v, 2) for m, v in s.items()} for k, s in stats.items()})
    # solid sheets of large nuclei: bigger nuclei, more of the area is nucleus
    assert a["mean_area_um2"] > 1.5 * b["mean_area_um2"]
    assert a["mean_area_um2"] > 2.0 * n["mean_area_um2"]
    assert a["nuclear_fraction"] > 1.3 * b["nuclear_fraction"]
    assert a["nuclear_fraction"] > 3.0 * n["nuclear_fraction"]
    # the glandular subtype is still far more cellular than normal tissue
    assert b["nuclear_fraction"] > 2.0 * n["nuclear_fraction"]
    # ...while the two tumour subtypes have about the same mean colour (no colour shortcut)
    diff_ab = np.abs(a["mean_rgb"] - b["mean_rgb"]).max()
    assert diff_ab < 12, f"mean colour differs by {diff_ab:.1f}"


# ---- physical scale --------------------------------------------------------------------------------
def test_same_scene_at_two_pixel_sizes_agrees_at_equal_physical_resolution(tmp_path):
    spec = SyntheticSlideSpec("p05", "c", "subtype_b", 1600, 1200, 0.5, seed=5, tumour_fraction=0.2)
    fine = replace(spec.at_mpp(0.25), slide_id="p025")
    assert (fine.width_px, fine.height_px) == (3200, 2400)
    paths = {s.mpp: generate_slide(s, tmp_path)["slide"] for s in (spec, fine)}
    c = spec.scene().tumour.representative_point()
    x_um, y_um, size_um = c.x - 150, c.y - 150, 300  # 300 x 300 um at 1.0 um/px
    views = {}
    for mpp, path in paths.items():
        n = round(size_um / mpp)
        with openslide.OpenSlide(str(path)) as s:
            img = np.asarray(s.read_region((round(x_um / mpp), round(y_um / mpp)), 0, (n, n)).convert("RGB"))
        views[mpp] = cv2.resize(img, (size_um, size_um), interpolation=cv2.INTER_AREA).astype(np.float32)
    mad = np.abs(views[0.5] - views[0.25]).mean()
    print(f"mean abs diff at 1.0 um/px: {mad:.2f}")
    assert views[0.5].std() > 30  # a structured region, not glass
    assert mad < 5.0


# ---- bounded memory -----------------------------------------------------------------------------------
def test_streaming_keeps_memory_far_below_level0(tmp_path):
    """A 12k x 12k slide (412 MiB of raw level 0) streams with a small working set.

    Peak RSS (VmHWM; getrusage's maxrss is inherited from the forking parent on Linux) is measured in
    a fresh process after a small warm-up slide (imports, texture tables and allocator pools are a
    one-off ~130 MiB whatever the slide size). Most of the slide is glass so the test stays fast, but
    strips, spools and pages cover the full 12k x 12k either way.
    """
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc/self/status (Linux) to read the peak RSS")
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(SRC)!r})
        import cv2
        cv2.setNumThreads(1)
        from slidemil.demo.dataset import SyntheticSlideSpec, generate_slide
        spec = SyntheticSlideSpec("big", "c", "subtype_a", 12000, 12000, 0.5, seed=3, tumour_fraction=0.1,
                                  tissue_coverage=0.08, n_tissue_pieces=1)
        def peak_kib():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        warm = SyntheticSlideSpec("warm", "c", "subtype_a", 1500, 1500, 0.5, seed=3, tumour_fraction=0.1)
        generate_slide(warm, {str(tmp_path)!r})
        before = peak_kib()
        generate_slide(spec, {str(tmp_path)!r})
        print((peak_kib() - before) / 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    growth_mb = float(out.stdout.strip().splitlines()[-1])
    level0_mb = 12000 * 12000 * 3 / 2**20
    print(f"peak RSS growth {growth_mb:.0f} MiB for a {level0_mb:.0f} MiB level 0")
    assert growth_mb < 0.3 * level0_mb
    with openslide.OpenSlide(str(tmp_path / "big.svs")) as s:
        assert s.dimensions == (12000, 12000)
        assert s.level_count == 3
        assert s.level_dimensions[2] == (750, 750)


def test_polygon_coverage_is_exact_and_block_independent():
    from slidemil.demo.raster import polygon_coverage

    theta = np.linspace(0, 2 * np.pi, 37, endpoint=False)
    ring = np.stack([60 + 40.3 * np.cos(theta), 50 + 25.7 * np.sin(theta)], axis=1)
    hole = np.stack([60 + 10 * np.cos(theta), 50 + 8 * np.sin(theta)], axis=1)
    whole = polygon_coverage([ring, hole], 100, 120, vsub=8)
    area = 0.5 * abs(
        np.dot(ring[:, 0], np.roll(ring[:, 1], -1)) - np.dot(ring[:, 1], np.roll(ring[:, 0], -1))
    )
    area -= 0.5 * abs(
        np.dot(hole[:, 0], np.roll(hole[:, 1], -1)) - np.dot(hole[:, 1], np.roll(hole[:, 0], -1))
    )
    assert whole.sum() == pytest.approx(area, rel=2e-3)
    assert whole[50, 60] == 0.0 and whole[50, 30] == 1.0  # hole empty, body full
    part = polygon_coverage([ring - (37, 41), hole - (37, 41)], 30, 50, vsub=8)
    assert np.array_equal(part, whole[41:71, 37:87])
