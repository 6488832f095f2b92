"""Tiling at a physical resolution on real slides: coordinates, exact re-reads, mpp handling, multi-scale,
resume keys (settings, slide identity, code version)."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from slidemil.data.tile_batch import SlideJob, TileOutputs, tile_one
from slidemil.slides.backends import open_slide
from slidemil.slides.errors import MissingMppError
from slidemil.slides.reader import resize_rgb
from slidemil.slides.tiling import TilingParams, grid_positions, plan_tile_sets
from slidemil.slides.tissue import TissueParams, segment_tissue
from slidemil.store import read_tile_set, tile_set_names, versions

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
    tiles = read_tile_set(tmp_path / "tiles" / "cmu.h5")
    g = tiles.geometry
    # slide mpp 0.499 ~ target 0.5: level 0 read at (almost) the tile size
    assert g.read_level == 0 and abs(g.level0_px - 224) <= 1
    # 2220 x 2967 px slide: at most 9 x 13 = 117 full tiles; the QC image shows tissue over most of it
    assert 40 <= len(tiles) <= 117, len(tiles)
    assert (tiles.tissue_coverage >= 0.5).all()
    assert (tmp_path / "qc" / "cmu.png").stat().st_size > 1000
    assert (tmp_path / "tissue" / "cmu.geojson").exists()

    # a tile re-read from the stored attributes equals the same region read directly
    with open_slide(tiles.slide_path, mpp=tiles.geometry.slide_mpp) as reader:
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
    tiles = read_tile_set(tmp_path / "tiles" / "TCGA-CR-7395.h5")
    assert tiles.attrs["mpp_source"] == "supplied"
    assert tiles.geometry.level0_px == 448  # 224 px at 0.5 um/px from a 0.25 um/px slide
    assert len(tiles) > 10

    # a config-level default applies only when neither file nor manifest has one
    res = tile_one(SlideJob("TCGA-default", path, default_mpp=0.25), TilingParams(), TISSUE, out)
    assert res.status == "done", res.error
    assert read_tile_set(tmp_path / "tiles" / "TCGA-default.h5").attrs["mpp_source"] == "default"


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
    assert (read_tile_set(tmp_path / "tiles" / "cmu.h5").tissue_coverage >= 0.9).all()


def test_code_version_change_retiles_and_a_moved_slide_does_not(tmp_path, slides_dir, monkeypatch):
    out = _outputs(tmp_path)
    slide = tmp_path / "a" / "cmu.svs"
    slide.parent.mkdir()
    shutil.copy(slides_dir / "CMU-1-Small-Region.svs", slide)
    job = SlideJob("cmu", str(slide))
    assert tile_one(job, TilingParams(), TISSUE, out).status == "done"
    h5 = tmp_path / "tiles" / "cmu.h5"
    first = read_tile_set(h5)

    # a moved clone: same file elsewhere -> not re-tiled, but the tile file now points at the new place
    moved = tmp_path / "b" / "cmu.svs"
    moved.parent.mkdir()
    shutil.move(slide, moved)
    assert tile_one(SlideJob("cmu", str(moved)), TilingParams(), TISSUE, out).status == "skipped"
    again = read_tile_set(h5)
    assert again.slide_path == str(moved) and again.attrs["resume_key"] == first.attrs["resume_key"]
    np.testing.assert_array_equal(again.coords, first.coords)

    # the tiling code changed (e.g. a tissue-segmentation constant): the slide is re-tiled, not "skipped"
    monkeypatch.setattr(versions, "tile_code_version", lambda: "edited-tissue-code")
    assert tile_one(SlideJob("cmu", str(moved)), TilingParams(), TISSUE, out).status == "done"
    assert read_tile_set(h5).attrs["resume_key"] != first.attrs["resume_key"]
    assert tile_one(SlideJob("cmu", str(moved)), TilingParams(), TISSUE, out).status == "skipped"


def test_code_version_follows_the_source(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_tissue_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "seg.py").write_text("SAT_THRESHOLD = 8\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from slidemil.utils import hashing

    before = hashing.code_version(["fake_tissue_pkg"])
    assert hashing.code_version(["fake_tissue_pkg"]) == before
    (pkg / "seg.py").write_text("SAT_THRESHOLD = 9\n")
    hashing._code_version.cache_clear()
    assert hashing.code_version(["fake_tissue_pkg"]) != before
    assert len(versions.tile_code_version()) == 16


def test_tile_stage_stores_parents_with_their_own_geometry(tmp_path, slides_dir):
    out = _outputs(tmp_path)
    job = SlideJob("cmu", str(slides_dir / "CMU-1-Small-Region.svs"))
    params = TilingParams(tile_px=128, target_mpp=0.5, multiscale_factor=4, min_tissue=0.25)
    assert tile_one(job, params, TISSUE, out).status == "done"
    assert tile_set_names(tmp_path / "tiles" / "cmu.h5") == ["tiles", "parents"]
    parents = read_tile_set(tmp_path / "tiles" / "cmu.h5", "parents")
    tiles = read_tile_set(tmp_path / "tiles" / "cmu.h5", "tiles")
    assert parents.geometry.target_mpp == 2.0 and parents.geometry.tile_px == 128
    assert parents.geometry.level0_px == 4 * tiles.geometry.level0_px
    assert (parents.tissue_coverage >= 0.25).all() and parents.children.shape == (len(parents), 16)
    assert tile_one(job, TilingParams(multiscale_factor=0), TISSUE, out).status == "done"
    assert tile_set_names(tmp_path / "tiles" / "cmu.h5") == ["tiles"]


def test_multiscale_children_in_physical_units(slides_dir):
    with open_slide(slides_dir / "CMU-1-Small-Region.svs") as reader:
        seg = segment_tissue(reader, TISSUE)
        tiles, parents = plan_tile_sets(
            reader, seg, TilingParams(tile_px=128, target_mpp=0.5, multiscale_factor=4, min_tissue=0.25)
        )
    assert parents.name == "parents" and parents.children.shape[1] == 16 and len(parents) > 0
    child = tiles.geometry.level0_px
    assert parents.geometry.level0_px == 4 * child
    for p, (X, Y) in enumerate(parents.coords):
        for k, idx in enumerate(parents.children[p]):
            if idx >= 0:
                x, y = tiles.coords[idx]
                assert (x, y) == (X + (k % 4) * child, Y + (k // 4) * child)
    # most children of a kept parent are tissue tiles themselves
    assert (parents.children >= 0).mean() > 0.5


def _children_mosaic(reader, tiles, parent_xy, children, s):
    """The s x s children of a parent read as tiles (dropped ones too, at their physical place), downsampled."""
    px, c = tiles.geometry.tile_px, tiles.geometry.level0_px
    mosaic = np.zeros((s * px, s * px, 3), np.uint8)
    for k, idx in enumerate(children):
        x, y = parent_xy[0] + (k % s) * c, parent_xy[1] + (k // s) * c
        if idx >= 0:
            assert tuple(tiles.coords[idx]) == (x, y)
        mosaic[(k // s) * px : (k // s + 1) * px, (k % s) * px : (k % s + 1) * px] = reader.read_tile(
            (x, y), tiles.geometry
        )
    return resize_rgb(mosaic, px, px)


@pytest.mark.parametrize("mpp", [0.25, 0.5])
def test_parent_rereads_as_the_region_of_its_children(tmp_path, slides_dir, mpp):
    """A parent tile re-read with its own geometry shows what its s x s children show, downsampled."""
    if mpp == 0.5:  # the real CMU slide (0.499 um/px, one level): parents and children both read level 0
        path, tol = slides_dir / "CMU-1-Small-Region.svs", 0.5  # measured: 0.0
    else:  # synthetic 0.25 um/px pyramid: parents read level 1, children level 0 (JPEG + resampling)
        path, tol = _scene(tmp_path, mpp)["slide"], 3.0  # measured: 1.6-1.8
    params = TilingParams(tile_px=128, target_mpp=0.5, multiscale_factor=4, min_tissue=0.5)
    with open_slide(path) as reader:
        tiles, parents = plan_tile_sets(reader, segment_tissue(reader, TISSUE), params)
        if mpp == 0.25:
            assert parents.geometry.read_level == 1 and tiles.geometry.read_level == 0
        assert len(parents) >= 2
        for p in np.linspace(0, len(parents) - 1, 4).round().astype(int):
            X, Y = (int(v) for v in parents.coords[p])
            parent = reader.read_tile((X, Y), parents.geometry)
            assert parent.shape == (128, 128, 3)
            np.testing.assert_array_equal(parent, reader.read_tile((X, Y), parents.geometry))  # exact re-read
            expected = _children_mosaic(reader, tiles, (X, Y), parents.children[p], 4)
            diff = np.abs(parent.astype(int) - expected.astype(int)).mean()
            assert diff < tol, (p, diff)


def _scene(tmp_path, mpp):
    from slidemil.demo.dataset import SyntheticSlideSpec, generate_slide

    spec = SyntheticSlideSpec(slide_id=f"s{mpp}", width_px=int(1200 / mpp), height_px=int(900 / mpp), mpp=mpp,
                              case_id="c0", label="subtype_a", seed=11, tumour_fraction=0.1)
    return generate_slide(spec, tmp_path)


def test_same_physical_area_at_different_scan_resolutions(tmp_path):
    """The same scene scanned at 0.25 and 0.5 um/px gives the same tiles, parents and children in micrometres."""
    params = TilingParams(tile_px=112, target_mpp=0.5, multiscale_factor=4)
    tiles_um, parents_um, layout = {}, {}, {}
    for mpp in (0.25, 0.5):
        with open_slide(_scene(tmp_path, mpp)["slide"]) as reader:
            seg = segment_tissue(reader, TISSUE)
            tiles, parents = plan_tile_sets(reader, seg, params)
        assert tiles.geometry.level0_px * mpp == pytest.approx(56.0, abs=0.5)  # 112 px x 0.5 um
        assert parents.geometry.level0_px * mpp == pytest.approx(224.0, abs=2)  # 4 x 56 um
        tiles_um[mpp] = {(round(x * mpp), round(y * mpp)) for x, y in tiles.coords}
        parents_um[mpp] = {(round(x * mpp), round(y * mpp)) for x, y in parents.coords}
        # each parent's children as micrometre offsets from the parent (None = child dropped)
        layout[mpp] = {
            (round(X * mpp), round(Y * mpp)): tuple(
                None if i < 0 else (round((tiles.coords[i][0] - X) * mpp), round((tiles.coords[i][1] - Y) * mpp))
                for i in ch
            )
            for (X, Y), ch in zip(parents.coords, parents.children, strict=True)
        }
    for sets in (tiles_um, parents_um):
        a, b = sets[0.25], sets[0.5]
        assert len(a) > 3
        assert len(a & b) / len(a | b) > 0.85, (len(a), len(b), len(a & b))
    common = sorted(parents_um[0.25] & parents_um[0.5])
    grid = tuple((i * 56, j * 56) for j in range(4) for i in range(4))
    agree = 0
    for key in common:
        for lay in (layout[0.25][key], layout[0.5][key]):
            assert all(off is None or off == grid[k] for k, off in enumerate(lay))  # row-major, in um
        agree += sum((u is None) == (v is None) for u, v in zip(layout[0.25][key], layout[0.5][key], strict=True))
    assert agree / (16 * len(common)) > 0.9
