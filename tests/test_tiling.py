"""Tiling at a physical resolution on real slides: coordinates, exact re-reads, mpp handling, multi-scale."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from slidemil.data.tile_store import read_tiles
from slidemil.slides.backends import open_slide
from slidemil.slides.batch import SlideJob, TileOutputs, tile_one
from slidemil.slides.errors import MissingMppError
from slidemil.slides.tiling import TilingParams, grid_positions, plan_tiles
from slidemil.slides.tissue import TissueParams, segment_tissue

TISSUE = TissueParams()


def _outputs(tmp_path):
    out = TileOutputs(tmp_path / "tiles", tmp_path / "tissue", tmp_path / "qc")
    out.make()
    return out


def test_grid_positions_full_tiles_only():
    xs, ys = grid_positions(1000, 500, 224, 224)
    assert set(xs.tolist()) == {0, 224, 448, 672} and set(ys.tolist()) == {0, 224}
    assert (xs + 224 <= 1000).all() and (ys + 224 <= 500).all()
    assert grid_positions(100, 100, 224, 224)[0].size == 0


def test_cmu_tiles_at_half_micron(tmp_path, slides_dir):
    out = _outputs(tmp_path)
    job = SlideJob("cmu", str(slides_dir / "CMU-1-Small-Region.svs"))
    res = tile_one(job, TilingParams(tile_px=224, target_mpp=0.5), TISSUE, out)
    assert res.status == "done", res.error
    tiles = read_tiles(tmp_path / "tiles" / "cmu.h5")
    g = tiles.geometry
    # slide mpp 0.499 ~ target 0.5: level 0 read at (almost) the tile size
    assert g.read_level == 0 and abs(g.level0_px - 224) <= 1
    # 2220 x 2967 px slide: at most 9 x 13 = 117 full tiles; the QC image shows tissue over most of it
    assert 40 <= len(tiles) <= 117, len(tiles)
    assert (tiles.tissue_coverage >= 0.5).all()
    assert (tmp_path / "qc" / "cmu.png").stat().st_size > 1000
    assert (tmp_path / "tissue" / "cmu.geojson").exists()

    # a tile re-read from the stored attributes equals the same region read directly
    with open_slide(tiles.slide_path, mpp=tiles.attrs["slide_mpp"]) as reader:
        for i in (0, len(tiles) // 2, len(tiles) - 1):
            x, y = (int(v) for v in tiles.coords[i])
            tile = reader.read_tile((x, y), g)
            direct = reader.read_at_mpp((x, y), (224, 224), 0.5)
            assert tile.shape == (224, 224, 3)
            region = reader.read_region((x, y), g.read_level, (g.read_px, g.read_px))
            expected = (
                cv2.resize(region, (224, 224), interpolation=cv2.INTER_AREA) if g.read_px != 224 else region
            )
            np.testing.assert_array_equal(tile, expected)
            assert np.abs(tile.astype(int) - direct.astype(int)).mean() < 3.0
            # tissue tiles are not white glass
            assert tile.mean() < 235


def test_missing_mpp_fails_clearly_then_tiles_with_supplied_mpp(tmp_path, slides_dir):
    out = _outputs(tmp_path)
    path = str(slides_dir / "TCGA-CR-7395-01A-01-TS1.svs")
    res = tile_one(SlideJob("TCGA-CR-7395", path), TilingParams(), TISSUE, out)
    assert res.status == "failed"
    assert "TCGA-CR-7395" in res.error and "mpp" in res.error
    assert not (tmp_path / "tiles" / "TCGA-CR-7395.h5").exists()

    res = tile_one(SlideJob("TCGA-CR-7395", path, mpp=0.25), TilingParams(), TISSUE, out)
    assert res.status == "done", res.error
    tiles = read_tiles(tmp_path / "tiles" / "TCGA-CR-7395.h5")
    assert tiles.attrs["mpp_source"] == "supplied"
    assert tiles.geometry.level0_px == 448  # 224 px at 0.5 um/px from a 0.25 um/px slide
    assert len(tiles) > 10

    # a config-level default applies only when neither file nor manifest has one
    res = tile_one(SlideJob("TCGA-default", path, default_mpp=0.25), TilingParams(), TISSUE, out)
    assert res.status == "done", res.error
    assert read_tiles(tmp_path / "tiles" / "TCGA-default.h5").attrs["mpp_source"] == "default"


def test_missing_mpp_error_type(slides_dir):
    with open_slide(slides_dir / "TCGA-CR-7395-01A-01-TS1.svs") as reader, pytest.raises(MissingMppError):
        reader.tile_geometry(224, 0.5)


def test_skip_when_done_and_redo_when_settings_change(tmp_path, slides_dir):
    out = _outputs(tmp_path)
    job = SlideJob("cmu", str(slides_dir / "CMU-1-Small-Region.svs"))
    assert tile_one(job, TilingParams(), TISSUE, out).status == "done"
    mtime = (tmp_path / "tiles" / "cmu.h5").stat().st_mtime_ns
    assert tile_one(job, TilingParams(), TISSUE, out).status == "skipped"
    assert (tmp_path / "tiles" / "cmu.h5").stat().st_mtime_ns == mtime
    assert tile_one(job, TilingParams(min_tissue=0.9), TISSUE, out).status == "done"
    assert (read_tiles(tmp_path / "tiles" / "cmu.h5").tissue_coverage >= 0.9).all()


def test_multiscale_children_in_physical_units(slides_dir):
    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as reader:
        seg = segment_tissue(reader, TISSUE)
        tiles = plan_tiles(
            reader, seg, TilingParams(tile_px=128, target_mpp=0.5, multiscale_factor=4, min_tissue=0.25)
        )
    ms = tiles.multiscale
    assert ms is not None and ms.children.shape[1] == 16 and len(ms.parent_coords) > 0
    child = tiles.geometry.level0_px
    assert ms.parent_level0_px == 4 * child
    for p, (X, Y) in enumerate(ms.parent_coords):
        for k, idx in enumerate(ms.children[p]):
            if idx >= 0:
                x, y = tiles.coords[idx]
                assert (x, y) == (X + (k % 4) * child, Y + (k // 4) * child)
    # most children of a kept parent are tissue tiles themselves
    assert (ms.children >= 0).mean() > 0.5


def test_same_physical_area_at_different_scan_resolutions(tmp_path):
    """The same scene scanned at 0.25 and 0.5 um/px gives the same tiles in micrometres."""
    from slidemil.demo.dataset import SyntheticSlideSpec, generate_slide

    common = dict(case_id="c0", label="subtype_a", seed=11, tumour_fraction=0.1)
    paths = {}
    for mpp in (0.25, 0.5):
        spec = SyntheticSlideSpec(
            slide_id=f"s{mpp}", width_px=int(1200 / mpp), height_px=int(900 / mpp), mpp=mpp, **common
        )
        paths[mpp] = generate_slide(spec, tmp_path)
    footprints = {}
    for mpp, p in paths.items():
        with open_slide(p["slide"] if isinstance(p, dict) else p) as reader:
            seg = segment_tissue(reader, TISSUE)
            tiles = plan_tiles(reader, seg, TilingParams(tile_px=224, target_mpp=0.5))
        assert tiles.geometry.level0_px * mpp == pytest.approx(112.0, abs=0.5)  # 224 px x 0.5 um
        footprints[mpp] = {(round(x * mpp), round(y * mpp)) for x, y in tiles.coords}
    a, b = footprints[0.25], footprints[0.5]
    assert len(a) > 10
    jaccard = len(a & b) / len(a | b)
    assert jaccard > 0.9, jaccard
