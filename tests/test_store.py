"""The layered per-slide store: one checked reader/writer for every layer, tile sets, linked feature layers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from slidemil.slides.geometry import TileGeometry
from slidemil.store import (
    FORMAT_VERSION,
    LayerError,
    LayerGroup,
    SlideStore,
    TileSetLayer,
    feature_writer,
    is_current,
    read_feature_attrs,
    read_feature_layer,
    read_layer,
    read_tile_set,
    tile_set_names,
    tiles_digest,
    write_features,
    write_layer,
    write_tile_sets,
)
from slidemil.store.layers import rewrite_attrs
from slidemil.utils.atomic import remove_stale_temps

GEOM = TileGeometry(tile_px=224, target_mpp=0.5, slide_mpp=0.25, read_level=1, read_downsample=2.0,
                    read_px=224, level0_px=448, level0_stride=448)


def _tiles(n: int = 6, slide_id: str = "s1") -> TileSetLayer:
    coords = np.stack([np.arange(n) * 448, np.full(n, 896)], axis=1).astype(np.int64)
    return TileSetLayer("tiles", slide_id, f"/slides/{slide_id}.svs", coords, GEOM,
                        np.linspace(0.5, 1.0, n).astype(np.float32), attrs={"min_tissue": 0.5})


def _parents(tiles: TileSetLayer) -> TileSetLayer:
    geom = GEOM.coarser(2, [1.0, 2.0, 8.0])
    children = np.array([[0, 1, -1, -1], [2, 3, -1, -1], [4, 5, -1, -1]], np.int64)
    coords = tiles.coords[[0, 2, 4]]
    return TileSetLayer("parents", tiles.slide_id, tiles.slide_path, coords, geom, np.ones(3, np.float32),
                        children=children, attrs={"scale_factor": 2, "children_of": "tiles"})


def _raw_layer(path: Path, *, kind="features", version=FORMAT_VERSION, complete=True, feats=None) -> Path:
    """A layer file written by hand, the way a buggy or killed writer (or a client) could leave one."""
    with h5py.File(path, "w") as f:
        g = f.create_group("tiles")
        g["features"] = np.ones((3, 4), np.float32) if feats is None else feats
        g["coords"] = np.zeros((3, 2), np.int64)
        if kind is not None:
            f.attrs["kind"] = kind
        f.attrs["format_version"] = version
        if complete:
            f.attrs["complete"] = True
    return path


# ---- generic layer IO -------------------------------------------------------------------------------------
def test_generic_layer_round_trip_and_resume_key(tmp_path):
    path = tmp_path / "stains" / "s1.h5"
    stain = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]], np.float32)
    members = LayerGroup({"tile_segment": np.array([0, 0, 1, -1])}, {"n_segments": 2})
    write_layer(path, "stains", {"matrix": stain}, {"method": "macenko", "note": None},
                groups={"segments": members}, resume_key="k1")
    layer = read_layer(path, "stains")
    assert layer.kind == "stains" and layer.path == str(path)
    np.testing.assert_array_equal(layer.arrays["matrix"], stain)
    np.testing.assert_array_equal(layer.groups["segments"].arrays["tile_segment"], [0, 0, 1, -1])
    assert layer.groups["segments"].attrs == {"n_segments": 2}
    assert layer.attrs["method"] == "macenko" and layer.attrs["note"] == ""
    assert layer.attrs["complete"] is True and layer.attrs["format_version"] == FORMAT_VERSION
    assert is_current(path, "k1") and is_current(path, "k1", "stains")
    assert not is_current(path, "k2") and not is_current(path, "k1", "tiles")
    assert not is_current(tmp_path / "missing.h5", "k1")
    (tmp_path / "garbage.h5").write_bytes(b"not hdf5")
    assert not is_current(tmp_path / "garbage.h5", "k1")
    with pytest.raises(ValueError, match="set by the store"):
        write_layer(tmp_path / "x.h5", "stains", {}, {"complete": True})


def test_rewrite_attrs_keeps_arrays_and_resume_key(tmp_path):
    path = write_tile_sets(tmp_path / "s1.h5", [_tiles()], attrs={"width": 9}, resume_key="k")
    rewrite_attrs(path, "tiles", {"slide_path": "/moved/s1.svs"})
    got = read_tile_set(path)
    assert got.slide_path == "/moved/s1.svs" and got.attrs["width"] == 9
    np.testing.assert_array_equal(got.coords, _tiles().coords)
    assert is_current(path, "k", "tiles")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _raw_layer(p, complete=False), "incomplete"),
        (lambda p: _raw_layer(p, kind=None), "not a slidemil layer"),
        (lambda p: _raw_layer(p, kind="tiles"), "is a 'tiles' layer, expected 'features'"),
        (lambda p: _raw_layer(p, version=1), "format version 1"),
        (lambda p: _raw_layer(p, feats=np.array([[1.0, np.nan]] * 3, np.float32)), "NaN or infinite"),
        (lambda p: _raw_layer(p, feats=np.array([[1.0, np.inf]] * 3, np.float32)), "NaN or infinite"),
        (lambda p: p.write_bytes(b"\x89HDF junk"), "not a readable HDF5 file"),
    ],
)
def test_reader_refuses_bad_files_naming_them(tmp_path, make, message):
    path = tmp_path / "bad_slide.h5"
    make(path)
    with pytest.raises(LayerError, match=message) as info:
        read_feature_layer(path)
    assert str(path) in str(info.value) and info.value.problem in str(info.value)
    assert str(path) not in info.value.problem  # serving shows the problem under the client's file name


def test_reader_refuses_links_and_external_storage(tmp_path):
    target = _raw_layer(tmp_path / "target.h5")
    linked = tmp_path / "linked.h5"
    with h5py.File(linked, "w") as f:
        f["tiles/features"] = h5py.ExternalLink(str(target), "/tiles/features")
        f.attrs.update(kind="features", format_version=FORMAT_VERSION, complete=True)
    with pytest.raises(LayerError, match=r"`/tiles/features` is a link"):
        read_feature_layer(linked)
    raw = tmp_path / "raw.bin"
    np.ones((3, 4), np.float32).tofile(raw)
    external = tmp_path / "external.h5"
    with h5py.File(external, "w") as f:
        f.create_dataset("tiles/features", shape=(3, 4), dtype=np.float32, external=[(str(raw), 0, 48)])
        f["tiles/coords"] = np.zeros((3, 2), np.int64)
        f.attrs.update(kind="features", format_version=FORMAT_VERSION, complete=True)
    with pytest.raises(LayerError, match="plain dataset stored in the file itself"):
        read_feature_layer(external)


def test_writer_refuses_nan_and_publishes_nothing(tmp_path):
    path = tmp_path / "f" / "s1.h5"
    feats = np.ones((6, 4), np.float32)
    feats[3, 1] = np.nan
    with pytest.raises(LayerError, match=r"refusing to write: `/tiles/features` contains NaN") as info:
        write_features(path, feats, _tiles().coords, {"slide_id": "s1", "encoder": "e"})
    assert str(path) in str(info.value)
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_killed_writer_leaves_no_file(tmp_path):
    """SIGKILL mid-write (no cleanup runs): nothing at the final path; the temp file is refused and swept."""
    path = tmp_path / "features" / "s1.h5"
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from slidemil.store import feature_writer
        with feature_writer({str(path)!r}, {{"slide_id": "s1", "encoder": "e"}}, resume_key="k") as w:
            ds = w.tile_set("tiles", np.zeros((1000, 2), np.int64), 64)
            ds[:500] = 1.0
            w._f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not path.exists() and not is_current(path, "k")
    (tmp,) = path.parent.glob(".*.tmp")
    with pytest.raises(LayerError, match="incomplete"):
        read_feature_layer(tmp)
    assert remove_stale_temps(path.parent) == 1 and list(path.parent.iterdir()) == []


# ---- tile sets --------------------------------------------------------------------------------------------
def test_tile_sets_round_trip(tmp_path):
    tiles = _tiles()
    parents = _parents(tiles)
    path = write_tile_sets(tmp_path / "s1.h5", [tiles, parents], attrs={"width": 4000, "height": 3000},
                           resume_key="key")
    assert tile_set_names(path) == ["tiles", "parents"]
    for want in (tiles, parents):
        got = read_tile_set(path, want.name)
        assert got.name == want.name and got.slide_id == "s1" and got.slide_path == "/slides/s1.svs"
        assert got.geometry == want.geometry and len(got) == len(want)
        np.testing.assert_array_equal(got.coords, want.coords)
        np.testing.assert_array_equal(got.tissue_coverage, want.tissue_coverage)
        assert got.attrs["width"] == 4000 and got.attrs["n_tiles"] == len(want)
        assert tiles_digest(got) == tiles_digest(want)
    got = read_tile_set(path, "parents")
    np.testing.assert_array_equal(got.children, parents.children)
    assert got.attrs["scale_factor"] == 2 and got.geometry.level0_px == 2 * GEOM.level0_px
    assert read_tile_set(path).children is None
    with pytest.raises(LayerError, match="no tile set 'segments'"):
        read_tile_set(path, "segments")


def test_tile_sets_writer_checks_children(tmp_path):
    tiles = _tiles()
    bad = _parents(tiles)
    bad.children[0, 0] = len(tiles)
    with pytest.raises(ValueError, match="children index outside"):
        write_tile_sets(tmp_path / "s1.h5", [tiles, bad])
    with pytest.raises(ValueError, match="include 'tiles'"):
        write_tile_sets(tmp_path / "s1.h5", [_parents(tiles)])
    assert not (tmp_path / "s1.h5").exists()


def test_coarser_geometry_covers_its_children_exactly():
    # 0.2527 um/px "40x": planned parent footprint would round to 3546 px, not 4 x 886 = 3544
    tiles = TileGeometry.plan(tile_px=224, target_mpp=1.0, slide_mpp=0.2527, level_downsamples=[1, 4, 16])
    parent = tiles.coarser(4, [1, 4, 16])
    assert parent.level0_px == 4 * tiles.level0_px == parent.level0_stride
    assert parent.target_mpp == 4.0 and parent.tile_px == 224
    assert parent.read_level == 2 and parent.read_px == round(parent.level0_px / 16)


# ---- feature layers ---------------------------------------------------------------------------------------
def test_feature_layer_round_trip_two_tile_sets_and_links(tmp_path):
    tiles = _tiles()
    parents = _parents(tiles)
    rng = np.random.default_rng(0)
    f_tiles, f_parents = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(3, 8)).astype(np.float32)
    path = tmp_path / "resnet18" / "s1.h5"
    with feature_writer(path, {"slide_id": "s1", "encoder": "resnet18"}, resume_key="fk") as w:
        for ts, feats in ((tiles, f_tiles), (parents, f_parents)):
            w.tile_set(ts.name, ts.coords, 8, {"tiles_digest": tiles_digest(ts)})[...] = feats
    assert read_feature_attrs(path)["tile_sets"] == ["tiles", "parents"]
    assert read_feature_attrs(path)["feature_dim"] == 8 and is_current(path, "fk", "features")

    layer = read_feature_layer(path, tiles=tiles)
    assert (layer.slide_id, layer.tile_set, layer.encoder_id, layer.feature_dim) == ("s1", "tiles", "resnet18", 8)
    np.testing.assert_array_equal(layer.features, f_tiles)
    np.testing.assert_array_equal(layer.coords, tiles.coords)
    assert layer.attrs["n_tiles"] == 6 and layer.attrs["empty"] is False
    np.testing.assert_array_equal(read_feature_layer(path, "parents", tiles=parents).features, f_parents)

    with pytest.raises(LayerError, match="different coordinates") as info:
        read_feature_layer(path, tiles=_tiles(n=5))
    assert str(path) in str(info.value)
    moved = _tiles()
    moved.coords = moved.coords + 1
    with pytest.raises(LayerError, match="do not link"):
        read_feature_layer(path, tiles=moved)
    other_geometry = _tiles()
    other_geometry.geometry = TileGeometry(224, 0.5, 0.25, 0, 1.0, 448, 448, 448)
    with pytest.raises(LayerError, match="tiles digest"):
        read_feature_layer(path, tiles=other_geometry)
    with pytest.raises(LayerError, match="cannot link"):
        read_feature_layer(path, "parents", tiles=tiles)
    with pytest.raises(LayerError, match="limit of 5"):
        read_feature_layer(path, max_rows=5)


def test_feature_writer_refuses_mixed_dims_and_empty_files(tmp_path):
    path = tmp_path / "s1.h5"
    with pytest.raises(ValueError, match="feature_dim 4 differs"), feature_writer(path, {}) as w:
        w.tile_set("tiles", np.zeros((2, 2)), 8)
        w.tile_set("parents", np.zeros((1, 2)), 4)
    with pytest.raises(ValueError, match="at least one tile set"), feature_writer(path, {}):
        pass
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        write_features(path, np.ones((3, 4)), np.zeros((2, 2)), {})
    assert not path.exists()


def test_slide_store_reads_linked_layers(tmp_path):
    tiles = _tiles()
    store = SlideStore(tmp_path / "tiles", tmp_path / "features" / "enc", {"stains": tmp_path / "stains"})
    write_tile_sets(store.path("s1", "tiles"), [tiles, _parents(tiles)], resume_key="t")
    feats = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    write_features(store.path("s1", "features"), feats, tiles.coords, {"slide_id": "s1", "encoder": "enc"},
                   group_attrs={"tiles_digest": tiles_digest(tiles)})
    write_layer(store.path("s1", "stains"), "stains", {"matrix": np.eye(3, dtype=np.float32)})

    assert store.tile_set("s1").name == "tiles" and len(store.tile_set("s1", "parents")) == 3
    np.testing.assert_array_equal(store.features("s1").features, feats)
    assert store.feature_dim() == 4
    np.testing.assert_array_equal(store.layer("s1", "stains").arrays["matrix"], np.eye(3))
    assert store.has("s1", "tiles", "t") and not store.has("s1", "tiles", "other")
    with pytest.raises(LayerError, match="no features for tile set 'parents'"):
        store.features("s1", "parents")
    with pytest.raises(KeyError, match="segments"):
        store.layer("s1", "segments")

    # tiles re-made after the features: the store refuses the stale pairing
    write_tile_sets(store.path("s1", "tiles"), [_tiles(n=4)], resume_key="t2")
    with pytest.raises(LayerError, match="do not link"):
        store.features("s1")


def test_slide_store_feature_dim_needs_a_finished_file(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    _raw_layer(folder / "a.h5", complete=False)
    with pytest.raises(FileNotFoundError, match="no finished feature file"):
        SlideStore(tmp_path / "tiles", folder).feature_dim()

