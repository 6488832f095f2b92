"""Slide reading on real slides: metadata, physical resolution, plain images, DICOM and bad files."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from slidemil.slides.backends import open_slide
from slidemil.slides.errors import MissingMppError, SlideError, UnsupportedFormatError


def test_cmu_metadata_and_reads(slides_dir):
    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as r:
        assert r.dimensions == (2220, 2967)
        assert r.mpp == pytest.approx(0.499, abs=1e-3)
        assert r.objective_power == 20
        assert r.mpp_source == "file"
        g = r.tile_geometry(224, 0.5)
        tile = r.read_tile((600, 800), g)
        region = r.read_region((600, 800), g.read_level, (g.read_px, g.read_px))
        expected = region if g.read_px == 224 else cv2.resize(region, (224, 224), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(tile, expected)
        beyond = r.read_region((2200, 2950), 0, (64, 64))
        assert (beyond[30:, 30:] == 255).all()  # outside the scan is white
        thumb, ds = r.thumbnail(max_side=512)
        assert max(thumb.shape[:2]) == 512 and ds == pytest.approx(2967 / 512)


def test_missing_mpp_then_supplied(slides_dir):
    path = slides_dir / "TCGA-CR-7395-01A-01-TS1.svs"
    with open_slide(path) as r:
        assert not r.has_mpp and r.mpp_source == "missing"
        with pytest.raises(MissingMppError, match="TCGA-CR-7395-01A-01-TS1"):
            _ = r.mpp
    with open_slide(path, mpp=0.25) as r:
        assert r.level_count == 2
        assert r.level_mpp(1) == pytest.approx(0.5, rel=0.01)
        assert r.best_level_for_mpp(0.5) == 1  # level 1 is 0.5 um/px: read there, not at level 0
        assert r.best_level_for_mpp(0.3) == 0
        assert r.tile_geometry(224, 0.5).read_px == 224


def test_same_physical_region_from_two_scan_resolutions(tmp_path, slides_dir):
    """A region read at 1 um/px from a 0.25 um/px 'scan' and from a 2x-downsampled copy agree."""
    with open_slide(slides_dir / "CMU-1-Small-Region.svs", mpp=0.25) as r:
        region = r.read_region((400, 600), 0, (1200, 1200))
    half = cv2.resize(region, (600, 600), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "full.png"), cv2.cvtColor(region, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "half.png"), cv2.cvtColor(half, cv2.COLOR_RGB2BGR))
    with open_slide(tmp_path / "full.png", mpp=0.25) as a, open_slide(tmp_path / "half.png", mpp=0.5) as b:
        ra = a.read_at_mpp((200, 200), (200, 200), 1.0)  # level-0 px of each slide: same physical point
        rb = b.read_at_mpp((100, 100), (200, 200), 1.0)
    diff = np.abs(ra.astype(int) - rb.astype(int)).mean()
    assert diff < 3.0, diff


def test_plain_image_needs_mpp(shared_data, tmp_path):
    path = shared_data / "images" / "tiatoolbox_target_image.png"
    with open_slide(path) as r:
        assert r.level_count == 1 and r.dimensions == (1000, 1000)
        with pytest.raises(MissingMppError, match="tiatoolbox_target_image"):
            r.tile_geometry(224, 0.5)
    with open_slide(path, mpp=0.5) as r:
        assert r.read_tile((0, 0), r.tile_geometry(224, 0.5)).shape == (224, 224, 3)
    rgba = np.dstack([np.full((50, 60, 3), 100, np.uint8), np.full((50, 60), 255, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    cv2.imwrite(str(tmp_path / "grey.png"), np.full((40, 30), 77, np.uint8))
    with open_slide(tmp_path / "rgba.png", mpp=1) as r:
        assert r.read_region((0, 0), 0, (10, 10)).shape == (10, 10, 3)
    with open_slide(tmp_path / "grey.png", mpp=1) as r:
        assert (r.read_region((0, 0), 0, (10, 10)) == 77).all()
    with open_slide(shared_data / "images" / "nct_crc_TUM-AACHEHDV.tif", mpp=0.5) as r:
        assert r.dimensions == (224, 224) and r.read_region((0, 0), 0, (224, 224)).mean() < 230


def test_dicom_single_file(slides_dir):
    with open_slide(slides_dir / "small_HE_dicom.dcm") as r:
        assert r.dimensions == (3236, 2638)
        assert r.mpp == pytest.approx(15000 / 3236, rel=1e-6)  # ImagedVolumeWidth 15 mm over 3236 px
        thumb, _ = r.thumbnail(512)
        # frames are assembled in the right order: the padding beyond the pixel matrix never shows up
        assert thumb.min(axis=2).max() > 200 and (thumb.sum(axis=2) < 30).mean() < 0.01
        tile = r.read_region((1500, 1500), 0, (300, 300))
        assert tile.std() > 10  # tissue, not filler


def test_bad_files_raise_named_errors(tmp_path, slides_dir):
    with pytest.raises(SlideError, match="not found"):
        open_slide(tmp_path / "nope.svs")
    fake = tmp_path / "notes.svs"
    fake.write_text("hello")
    with pytest.raises(UnsupportedFormatError, match="notes"):
        open_slide(fake)
    truncated = tmp_path / "cut.svs"
    truncated.write_bytes((slides_dir / "CMU-1-Small-Region.svs").read_bytes()[:10_000])
    with pytest.raises(SlideError, match="cut"):
        with open_slide(truncated) as r:
            r.thumbnail(256)
    txt = tmp_path / "a.txt"
    shutil.copy(fake, txt)
    with pytest.raises(UnsupportedFormatError):
        open_slide(txt)
