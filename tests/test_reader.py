"""Slide readers on real H&E slides: metadata, physical-unit reads, plain images, DICOM and broken files."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from slidemil.slides import (
    MissingMppError,
    SlideError,
    UnsupportedFormatError,
    open_slide,
)
from slidemil.slides.reader import resize_rgb

CMU = "CMU-1-Small-Region.svs"
TCGA = "TCGA-CR-7395-01A-01-TS1.svs"
DICOM = "small_HE_dicom.dcm"


@pytest.fixture(scope="module")
def cmu(slides_dir: Path):
    with open_slide(slides_dir / CMU) as reader:
        yield reader


def _rgb_png(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return path


def _tissue_fraction(rgb: np.ndarray) -> float:
    """Share of pixels clearly darker than glass."""
    return float((rgb.astype(int).min(axis=2) < 200).mean())


# ---- OpenSlide: the normal case ------------------------------------------------------------------
def test_cmu_metadata(cmu):
    assert cmu.backend == "openslide"
    assert cmu.dimensions == (2220, 2967)
    assert cmu.level_count == 1
    assert cmu.mpp == pytest.approx(0.499)
    assert cmu.objective_power == 20
    props = cmu.properties()
    assert props["mpp_source"] == "file" and props["width"] == 2220


@pytest.mark.parametrize("target_mpp", [0.5, 1.0])
def test_read_tile_equals_resized_region(cmu, target_mpp):
    geometry = cmu.tile_geometry(224, target_mpp)
    assert geometry.level0_px == round(224 * target_mpp / 0.499)
    xy = (900, 1300)
    tile = cmu.read_tile(xy, geometry)
    region = cmu.read_region(xy, geometry.read_level, (geometry.read_px, geometry.read_px))
    assert tile.shape == (224, 224, 3) and tile.dtype == np.uint8
    assert np.array_equal(tile, resize_rgb(region, 224, 224))
    assert _tissue_fraction(tile) > 0.2


def test_reads_beyond_the_edge_are_white(cmu):
    w, h = cmu.dimensions
    region = cmu.read_region((w - 60, h - 40), 0, (200, 100))
    assert region.shape == (100, 200, 3)
    assert np.all(region[:, 60:] == 255) and np.all(region[40:, :] == 255)
    assert np.array_equal(region[:40, :60], cmu.read_region((w - 60, h - 40), 0, (60, 40)))
    assert np.all(cmu.read_region((w + 500, 10), 0, (64, 64)) == 255)
    before = cmu.read_region((-30, 1000), 0, (64, 64))
    assert np.all(before[:, :30] == 255)
    assert np.array_equal(before[:, 30:], cmu.read_region((0, 1000), 0, (34, 64)))


def test_thumbnail_of_cmu(cmu):
    thumb, downsample = cmu.thumbnail(max_side=512)
    assert max(thumb.shape[:2]) == 512
    assert thumb.shape == (512, math.floor(2220 / downsample), 3)
    assert downsample == pytest.approx(2967 / 512)
    assert 0.2 < _tissue_fraction(thumb) < 0.95


# ---- missing mpp -------------------------------------------------------------------------------
def test_missing_mpp_names_the_slide(slides_dir):
    with open_slide(slides_dir / TCGA) as reader:
        assert reader.dimensions == (4443, 3567) and reader.level_count == 2
        assert not reader.has_mpp and reader.objective_power is None
        with pytest.raises(MissingMppError, match="TCGA-CR-7395-01A-01-TS1"):
            _ = reader.mpp
    with open_slide(slides_dir / TCGA, slide_id="case-0042") as reader:
        with pytest.raises(MissingMppError, match="case-0042"):
            reader.tile_geometry(224, 0.5)


def test_supplied_mpp_picks_the_right_level(slides_dir):
    with open_slide(slides_dir / TCGA, mpp=0.25) as reader:
        assert reader.properties()["mpp_source"] == "supplied"
        assert reader.level_mpp(0) == 0.25
        assert reader.level_mpp(1) == pytest.approx(0.25 * 2.0005, rel=1e-4)
        assert reader.best_level_for_mpp(0.5) == 1  # level 1 (0.50013) is within tolerance of 0.5
        assert reader.best_level_for_mpp(0.4) == 0
        geometry = reader.tile_geometry(224, 0.5)
        assert (geometry.read_level, geometry.read_px, geometry.level0_px) == (1, 224, 448)
        xy = (1800, 1400)
        tile = reader.read_tile(xy, geometry)
        assert np.array_equal(tile, resize_rgb(reader.read_region(xy, 1, (224, 224)), 224, 224))
        assert _tissue_fraction(tile) > 0.2


def test_same_physical_region_across_resolutions(cmu, slides_dir, tmp_path):
    """A slide at 0.25 um/px and its 2x-downsampled copy at 0.5 um/px give the same 1 um/px image."""
    origin, side = (100, 500), 2048
    full = cmu.read_region(origin, 0, (side, side))
    half = cv2.resize(full, (side // 2, side // 2), interpolation=cv2.INTER_AREA)
    with (
        open_slide(slides_dir / CMU, mpp=0.25) as fine,
        open_slide(_rgb_png(tmp_path / "half.png", half), mpp=0.5) as coarse,
    ):
        assert coarse.backend == "plain"
        offset_um = (48.0, 32.0)  # physical offset inside the copied region
        a = fine.read_at_mpp(
            (origin[0] + round(offset_um[0] / 0.25), origin[1] + round(offset_um[1] / 0.25)), (256, 256), 1.0
        )
        b = coarse.read_at_mpp((round(offset_um[0] / 0.5), round(offset_um[1] / 0.5)), (256, 256), 1.0)
    diff = np.abs(a.astype(int) - b.astype(int))
    assert _tissue_fraction(a) > 0.2
    assert diff.mean() < 2.0, diff.mean()


# ---- plain images ------------------------------------------------------------------------------
def test_png_is_a_one_level_slide(shared_data):
    path = shared_data / "images" / "tiatoolbox_target_image.png"
    with open_slide(path) as reader:
        assert reader.backend == "plain" and reader.level_count == 1 and reader.dimensions == (1000, 1000)
        with pytest.raises(MissingMppError, match="tiatoolbox_target_image"):
            reader.tile_geometry(224, 0.5)
    expected = cv2.imread(str(path))[:, :, ::-1]
    with open_slide(path, mpp=0.5) as reader:
        thumb, downsample = reader.thumbnail(max_side=250)
        assert thumb.shape == (250, 250, 3) and downsample == 4.0
        assert (
            np.abs(thumb.astype(int) - cv2.resize(expected, (250, 250), interpolation=cv2.INTER_AREA)).max()
            <= 1
        )
        assert np.array_equal(reader.read_region((100, 700), 0, (300, 200)), expected[700:900, 100:400])
        tile = reader.read_tile((900, 900), reader.tile_geometry(224, 0.5))
        assert np.array_equal(tile[:100, :100], expected[900:, 900:]) and np.all(tile[100:] == 255)


def test_rgba_and_grayscale_pngs_become_rgb(shared_data, tmp_path):
    rgba_path = shared_data / "images" / "torchstain_source.png"
    with open_slide(rgba_path, mpp=0.5) as reader:
        region = reader.read_region((0, 0), 0, reader.dimensions)
    assert region.shape == (438, 584, 3)
    assert np.array_equal(region, np.asarray(Image.open(rgba_path).convert("RGB")))

    rgb = region
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:, :200, 3] = 0  # transparent strip -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    with open_slide(tmp_path / "alpha.png", mpp=0.5) as reader:
        out = reader.read_region((0, 0), 0, reader.dimensions)
    assert np.all(out[:, :200] == 255) and np.array_equal(out[:, 200:], rgb[:, 200:])

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    with open_slide(tmp_path / "gray.png", mpp=0.5) as reader:
        out = reader.read_region((10, 20), 0, (100, 50))
    assert out.shape == (50, 100, 3)
    assert all(np.array_equal(out[:, :, c], gray[20:70, 10:110]) for c in range(3))


def test_strip_tiff_is_read_by_segments(cmu, shared_data, tmp_path):
    import tifffile

    nct = shared_data / "images" / "nct_crc_TUM-AACHEHDV.tif"
    with open_slide(nct) as reader:  # strip TIFF: OpenSlide refuses it, the plain reader takes it
        assert reader.backend == "plain" and reader.dimensions == (224, 224)
        assert reader.native_mpp is None  # its 72 dpi resolution tag is not a microscope value
        assert np.array_equal(reader.read_region((0, 0), 0, (224, 224)), tifffile.imread(nct))

    image = cmu.read_region((300, 700), 0, (1500, 1300))
    path = tmp_path / "strips.tif"
    # 0.5 um/px written as 20000 px/cm, as converters do
    tifffile.imwrite(
        path,
        image,
        rowsperstrip=64,
        compression="zlib",
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    with open_slide(path) as reader:
        assert reader.backend == "plain" and reader.dimensions == (1500, 1300)
        assert reader.mpp == pytest.approx(0.5)
        whole_thumb, _ = reader.thumbnail(max_side=300)
        reader.whole_load_max_pixels = 0  # force segment-wise reading as for a huge TIFF
        for xy, size in [((0, 0), (100, 100)), ((1430, 1250), (100, 100)), ((123, 60), (700, 333))]:
            region = reader.read_region(xy, 0, size)
            x, y = xy
            inside = image[y : y + size[1], x : x + size[0]]
            assert np.array_equal(region[: inside.shape[0], : inside.shape[1]], inside)
            assert np.all(region[inside.shape[0] :] == 255) and np.all(region[:, inside.shape[1] :] == 255)
        block_thumb, downsample = reader.thumbnail(max_side=300)
    assert block_thumb.shape == whole_thumb.shape == (260, 300, 3) and downsample == 5.0
    assert np.abs(block_thumb.astype(int) - whole_thumb.astype(int)).mean() < 1.0


def test_tiled_tiff_goes_to_openslide(cmu, tmp_path):
    import tifffile

    image = cmu.read_region((500, 800), 0, (700, 600))
    tifffile.imwrite(tmp_path / "tiled.tif", image, tile=(256, 256), compression="zlib")
    with open_slide(tmp_path / "tiled.tif", mpp=0.5) as reader:
        assert reader.backend == "openslide" and reader.dimensions == (700, 600)
        assert np.array_equal(reader.read_region((0, 0), 0, (700, 600)), image)


def test_absurdly_large_plain_image_is_refused(tmp_path):
    """A PNG header claiming 60000 x 60000 px is refused before any pixel is decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with pytest.raises(SlideError, match="huge.png"):
        open_slide(path, mpp=0.5)


def test_16bit_grayscale_tiff(shared_data, tmp_path):
    import tifffile

    gray = cv2.cvtColor(
        cv2.imread(str(shared_data / "images" / "tiatoolbox_target_image.png")), cv2.COLOR_BGR2GRAY
    )
    tifffile.imwrite(tmp_path / "gray16.tif", gray.astype(np.uint16) * 257)
    with open_slide(tmp_path / "gray16.tif", mpp=0.5) as reader:
        out = reader.read_region((0, 0), 0, (1000, 1000))
    assert np.array_equal(out[:, :, 1], gray)


# ---- DICOM -------------------------------------------------------------------------------------
def test_dicom_opens_and_shows_tissue(slides_dir):
    with open_slide(slides_dir / DICOM) as reader:
        assert reader.dimensions == (3236, 2638) and reader.level_count == 1
        # the file has no PixelSpacing (and a dummy 15 x 15 mm imaged volume), so no mpp of its own
        assert reader.native_mpp is None
        with pytest.raises(MissingMppError, match="small_HE_dicom"):
            _ = reader.mpp
    with open_slide(slides_dir / DICOM, mpp=4.6) as reader:
        thumb, _ = reader.thumbnail(max_side=512)
        assert thumb.shape == (417, 512, 3)
        assert 0.3 < _tissue_fraction(thumb) < 0.9
        # frames stitch: across the frame seam at x=500 neighbouring columns are as alike as elsewhere
        band = reader.read_region((480, 1000), 0, (40, 400)).astype(int)
        step = np.abs(np.diff(band, axis=1)).mean(axis=(0, 2))
        assert step[19] < 3 * np.median(step) + 2
        assert np.all(reader.read_region((3200, 2600), 0, (100, 100))[40:, 40:] == 255)


def _conformant_dicom_copy(source: Path, target: Path, pixel_spacing_mm: float) -> Path:
    """The same pixels as a standard-conformant instance: row-major TILED_FULL frames, ImageType,
    PixelSpacing and the photometric interpretation its JPEG frames really hold."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.sequence import Sequence

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(source)
        nx, ny = (
            math.ceil(ds.TotalPixelMatrixColumns / ds.Columns),
            math.ceil(ds.TotalPixelMatrixRows / ds.Rows),
        )
        frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
        ds.PixelData = encapsulate([frames[col * ny + row] for row in range(ny) for col in range(nx)])
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
        ds.DimensionOrganizationType = "TILED_FULL"
        ds.PhotometricInterpretation = "YBR_FULL_422"
        measures = Dataset()
        measures.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([measures])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target)
    return target


def test_conformant_dicom_goes_through_wsidicom_and_matches(slides_dir, tmp_path):
    copy = _conformant_dicom_copy(
        slides_dir / DICOM, tmp_path / "series" / "slide.dcm", pixel_spacing_mm=0.0046
    )
    with open_slide(slides_dir / DICOM, mpp=4.6) as fallback, open_slide(copy) as conformant:
        assert conformant.backend == "wsidicom" and fallback.backend == "pydicom-frames"
        assert conformant.mpp == pytest.approx(4.6)
        assert conformant.dimensions == fallback.dimensions
        a = conformant.read_region((400, 300), 0, (1200, 900)).astype(int)
        b = fallback.read_region((400, 300), 0, (1200, 900)).astype(int)
    assert np.abs(a - b).max() <= 2  # two JPEG decoders, same pixels
    with open_slide(copy.parent) as folder:  # a folder of instances is one slide
        assert folder.backend == "wsidicom" and folder.dimensions == (3236, 2638)


# ---- broken input ------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(SlideError, match="nothere.svs"):
        open_slide(tmp_path / "nothere.svs")


def test_text_file_renamed(tmp_path):
    for name in ("notes.svs", "notes.dcm"):
        (tmp_path / name).write_text("this is not a slide\n" * 10)  # longer than a DICOM preamble
        with pytest.raises(UnsupportedFormatError, match=name.replace(".", r"\.")) as info:
            open_slide(tmp_path / name)
        assert "does not start with a TIFF header" in str(info.value) or "no DICOM 'DICM' marker" in str(info.value)
        assert str(tmp_path) not in str(info.value)  # file names only: a server must not reveal its paths


def test_truncated_slide(slides_dir, tmp_path):
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes((slides_dir / CMU).read_bytes()[:10_240])
    with pytest.raises(SlideError, match="truncated.svs") as info:
        open_slide(truncated)
    assert "truncated" in info.value.problem and str(tmp_path) not in str(info.value)


def test_truncated_png_fails_on_read_with_slide_error(shared_data, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes((shared_data / "images" / "tiatoolbox_target_image.png").read_bytes()[:4096])
    with pytest.raises(SlideError, match="broken.png"):
        with open_slide(broken, mpp=0.5) as reader:
            reader.read_region((0, 0), 0, (10, 10))
