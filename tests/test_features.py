"""Feature extraction on a real slide: exact per-tile features, worker invariance, resume, failures, tile sets."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from slidemil.encoders import build_encoder
from slidemil.features import FeatureExtractionError, extract_many, extract_slide_features
from slidemil.slides.backends import open_slide
from slidemil.store import TileSetLayer, read_feature_layer, read_tile_set, versions, write_tile_sets

N_TILES = 20
TILE_PX = 224
TARGET_MPP = 0.5
MIN_SATURATION = 40  # mean HSV saturation (0..255) of H&E tissue; white background is < 15


def _tissue_coords(reader, geometry, n: int) -> np.ndarray:
    """``n`` grid tiles spread over the tissue, chosen from a thumbnail by mean saturation."""
    thumb, ds = reader.thumbnail(max_side=512)
    sat = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)[..., 1]
    w0, h0 = reader.dimensions
    step = geometry.level0_px
    keep = []
    for y in range(0, h0 - step + 1, step):
        for x in range(0, w0 - step + 1, step):
            cell = sat[int(y / ds) : int((y + step) / ds), int(x / ds) : int((x + step) / ds)]
            if cell.size and cell.mean() > MIN_SATURATION:
                keep.append((x, y))
    assert len(keep) >= n, f"only {len(keep)} tissue tiles found"
    idx = np.linspace(0, len(keep) - 1, n).round().astype(int)
    return np.array(keep, dtype=np.int64)[idx]


def _write_tile_file(path: Path, slide: Path, coords: np.ndarray, geometry, config_hash="cfg-1", parents=None):
    # the tile store names files by slide id: data/tiles/<slide_id>.h5
    tiles = TileSetLayer("tiles", path.stem, str(slide), coords, geometry, np.ones(len(coords), np.float32))
    sets = [tiles] if parents is None else [tiles, parents]
    write_tile_sets(path, sets, attrs={"width": 2220, "height": 2967}, resume_key=config_hash)


def read_features(path: Path, tile_set: str = "tiles"):
    """``(features, coords, attrs)`` of a feature file, read by the store's one checked reader."""
    layer = read_feature_layer(path, tile_set)
    return layer.features, layer.coords, layer.attrs


@pytest.fixture(scope="module")
def cmu(slides_dir, tmp_path_factory):
    """A tile file with ~20 tissue tiles of CMU-1-Small-Region at 0.5 um/px, 224 px."""
    slide = slides_dir / "CMU-1-Small-Region.svs"
    root = tmp_path_factory.mktemp("features")
    with open_slide(slide) as reader:
        geometry = reader.tile_geometry(TILE_PX, TARGET_MPP)
        coords = _tissue_coords(reader, geometry, N_TILES)
        tiles = np.stack([reader.read_tile(tuple(c), geometry) for c in coords])
        mpp = reader.mpp
    # the chosen tiles really are tissue, read at full tile size
    sats = [cv2.cvtColor(t, cv2.COLOR_RGB2HSV)[..., 1].mean() for t in tiles]
    assert tiles.shape == (N_TILES, TILE_PX, TILE_PX, 3) and min(sats) > MIN_SATURATION / 2
    tile_h5 = root / "tiles" / f"{slide.stem}.h5"
    _write_tile_file(tile_h5, slide, coords, geometry)
    return {
        "root": root,
        "slide": slide,
        "tile_h5": tile_h5,
        "tiles": tiles,
        "geometry": geometry,
        "mpp": mpp,
    }


@pytest.fixture(scope="module")
def encoder():
    return build_encoder("resnet18", "random", seed=0)


@pytest.fixture(scope="module")
def extracted(cmu, encoder):
    out = cmu["root"] / "w0" / "CMU-1-Small-Region.h5"
    stats = extract_slide_features(cmu["tile_h5"], encoder, out, batch_size=8, num_workers=0, progress=False)
    return out, stats


def test_features_equal_direct_encoding_of_each_tile(cmu, encoder, extracted):
    out, stats = extracted
    assert stats.n_tiles == N_TILES and not stats.skipped and stats.tiles_per_s > 0
    layer = read_feature_layer(out, tiles=read_tile_set(cmu["tile_h5"]))  # linked to exactly these tiles
    feats, coords, attrs = layer.features, layer.coords, layer.attrs
    assert feats.shape == (N_TILES, 512) and feats.dtype == np.float32 and layer.encoder_id == "resnet18"
    np.testing.assert_array_equal(coords, read_tile_set(cmu["tile_h5"]).coords)
    direct = encoder.embed(torch.from_numpy(cmu["tiles"])).numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-4, atol=1e-5)
    assert len({f.tobytes() for f in feats}) == N_TILES  # no duplicated or shuffled-in rows
    # identity, preprocessing and geometry travel with the features
    assert attrs["complete"] is True and attrs["empty"] is False
    assert attrs["encoder"] == "resnet18" and attrs["weights_id"] == "random:seed=0"
    assert attrs["feature_dim"] == 512 and attrs["input_px"] == 224
    assert attrs["mean"] == pytest.approx([0.485, 0.456, 0.406]) and attrs["std"] == pytest.approx(
        [0.229, 0.224, 0.225]
    )
    assert attrs["slide_id"] == "CMU-1-Small-Region" and attrs["tile_config_hash"] == "cfg-1"
    assert attrs["tile_px"] == TILE_PX and attrs["target_mpp"] == TARGET_MPP
    assert attrs["level0_px"] == cmu["geometry"].level0_px and attrs["slide_mpp"] == pytest.approx(cmu["mpp"])
    assert attrs["width"] == 2220 and attrs["precision"] == "float32"


def test_two_workers_give_identical_features(cmu, encoder, extracted):
    out2 = cmu["root"] / "w2" / "CMU-1-Small-Region.h5"
    stats = extract_slide_features(cmu["tile_h5"], encoder, out2, batch_size=8, num_workers=2, progress=False)
    assert stats.n_tiles == N_TILES
    f0, c0, _ = read_features(extracted[0])
    f2, c2, _ = read_features(out2)
    np.testing.assert_array_equal(f0, f2)
    np.testing.assert_array_equal(c0, c2)


def test_resume_skips_matching_output_and_redoes_changed_weights(cmu, encoder, extracted, tmp_path, monkeypatch):
    coords = read_tile_set(cmu["tile_h5"]).coords[:6]
    tile_h5 = tmp_path / "tiles" / "CMU-1-Small-Region.h5"
    _write_tile_file(tile_h5, cmu["slide"], coords, cmu["geometry"])
    out = tmp_path / "features" / "CMU-1-Small-Region.h5"
    first = extract_slide_features(tile_h5, encoder, out, progress=False)
    mtime = out.stat().st_mtime_ns
    again = extract_slide_features(tile_h5, encoder, out, progress=False)
    assert not first.skipped and again.skipped and again.n_tiles == 6
    assert out.stat().st_mtime_ns == mtime

    other = build_encoder("resnet18", "random", seed=1)
    redo = extract_slide_features(tile_h5, other, out, progress=False)
    assert not redo.skipped and out.stat().st_mtime_ns != mtime
    feats, _, attrs = read_features(out)
    assert attrs["weights_id"] == "random:seed=1"
    assert not np.allclose(feats, read_features(extracted[0])[0][:6])

    # a new tiling config for the same slide also invalidates the features
    _write_tile_file(tile_h5, cmu["slide"], coords, cmu["geometry"], config_hash="cfg-2")
    assert not extract_slide_features(tile_h5, other, out, progress=False).skipped
    assert read_features(out)[2]["tile_config_hash"] == "cfg-2"
    assert extract_slide_features(tile_h5, other, out, progress=False).skipped

    # so does a change of the extraction code (the encoders, tile reading, the writer)
    monkeypatch.setattr(versions, "feature_code_version", lambda: "edited-extract-code")
    assert not extract_slide_features(tile_h5, other, out, progress=False).skipped
    assert read_features(out)[2]["code_version"] == "edited-extract-code"
    assert extract_slide_features(tile_h5, other, out, progress=False).skipped


def test_parents_tile_set_is_encoded_into_its_own_group(cmu, encoder, extracted, tmp_path):
    """``tile_sets=("tiles", "parents")``: one file, one group per set, each row the encoding of its tile."""
    tiles = read_tile_set(cmu["tile_h5"])
    with open_slide(cmu["slide"]) as reader:
        pgeom = tiles.geometry.coarser(2, reader.level_downsamples)
        pcoords = tiles.coords[:3] // pgeom.level0_px * pgeom.level0_px
        ptiles = np.stack([reader.read_tile(tuple(c), pgeom) for c in pcoords])
    children = np.full((3, 4), -1, np.int64)
    parents = TileSetLayer("parents", tiles.slide_id, tiles.slide_path, pcoords, pgeom, np.ones(3, np.float32),
                           children=children)
    tile_h5 = tmp_path / "tiles" / "CMU-1-Small-Region.h5"
    _write_tile_file(tile_h5, cmu["slide"], tiles.coords[:4], cmu["geometry"], parents=parents)
    out = tmp_path / "features" / "CMU-1-Small-Region.h5"
    st = extract_slide_features(tile_h5, encoder, out, tile_sets=("tiles", "parents"), progress=False)
    assert st.n_tiles == 4 + 3
    feats = read_feature_layer(out, "parents", tiles=read_tile_set(tile_h5, "parents"))
    assert feats.attrs["level0_px"] == 2 * cmu["geometry"].level0_px and feats.attrs["tile_set"] == "parents"
    np.testing.assert_allclose(feats.features, encoder.embed(torch.from_numpy(ptiles)).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(read_features(out)[0], read_features(extracted[0])[0][:4], rtol=1e-4, atol=1e-5)
    # the same tile sets again: up to date; another list of tile sets is another output, so re-encoded
    assert extract_slide_features(tile_h5, encoder, out, tile_sets=("tiles", "parents"), progress=False).skipped
    assert not extract_slide_features(tile_h5, encoder, out, progress=False).skipped
    with pytest.raises(ValueError, match="no features for tile set 'parents'"):
        read_feature_layer(out, "parents")


def test_unfinished_output_is_redone(cmu, encoder, tmp_path):
    out = tmp_path / "x.h5"
    with h5py.File(out, "w") as f:  # what a killed run without atomic writes would leave
        f.create_dataset("features", data=np.zeros((N_TILES, 512), np.float32))
        f.attrs["encoder"] = "resnet18"
    coords = read_tile_set(cmu["tile_h5"]).coords[:4]
    small = tmp_path / "small.h5"
    _write_tile_file(small, cmu["slide"], coords, cmu["geometry"])
    st = extract_slide_features(small, encoder, out, progress=False)
    assert not st.skipped
    feats, _, attrs = read_features(out)
    assert attrs["complete"] is True and feats.shape == (4, 512) and np.abs(feats).sum() > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left behind


def test_slide_without_tiles_writes_flagged_empty_file(cmu, encoder, tmp_path):
    empty = tmp_path / "empty.h5"
    _write_tile_file(empty, cmu["slide"], np.zeros((0, 2), np.int64), cmu["geometry"])
    st = extract_slide_features(empty, encoder, tmp_path / "out" / "empty.h5", progress=False)
    assert st.n_tiles == 0
    feats, coords, attrs = read_features(tmp_path / "out" / "empty.h5")
    assert feats.shape == (0, 512) and coords.shape == (0, 2)
    assert attrs["empty"] is True and attrs["complete"] is True


def test_extract_many_continues_past_bad_slides_and_reports_them(cmu, encoder, tmp_path):
    good = tmp_path / "tiles" / "good.h5"
    _write_tile_file(good, cmu["slide"], read_tile_set(cmu["tile_h5"]).coords[:3], cmu["geometry"])
    missing_slide = tmp_path / "tiles" / "gone.h5"
    _write_tile_file(missing_slide, tmp_path / "gone.svs", np.array([[0, 0]]), cmu["geometry"])
    garbage = tmp_path / "tiles" / "garbage.h5"
    garbage.write_bytes(b"not hdf5")
    out_dir = tmp_path / "features"
    files = [missing_slide, good, garbage]

    with pytest.raises(FeatureExtractionError) as info:
        extract_many(files, encoder, out_dir, progress=False)
    summary = info.value.summary
    assert set(summary.failures) == {"gone", "garbage"}
    assert "gone" in str(info.value) and "garbage" in str(info.value)
    assert [s.slide_id for s in summary.stats] == ["good"] and summary.n_tiles == 3
    assert read_features(out_dir / "good.h5")[0].shape == (3, 512)

    again = extract_many(files, encoder, out_dir, progress=False, allow_failures=True)
    assert again.stats[0].skipped and set(again.failures) == {"gone", "garbage"}
    assert sorted(p.name for p in out_dir.iterdir()) == ["good.h5"]  # failures leave nothing behind


def _pid_logging_reader(slide_path: str, slide_mpp: float):
    """Reader factory that records which process opened it (module-level: it pickles into workers)."""
    import os

    from slidemil.features.extract import open_reader

    with open(os.environ["SLIDEMIL_TEST_PID_LOG"], "a") as f:
        f.write(f"{os.getpid()}\n")
    return open_reader(slide_path, slide_mpp)


def test_one_persistent_worker_reads_every_slide_of_a_run(cmu, encoder, extracted, tmp_path, monkeypatch):
    """extract_many runs one loader for the run: the same worker process reads all slides, features unchanged."""
    import os

    pid_log = tmp_path / "pids.txt"
    monkeypatch.setenv("SLIDEMIL_TEST_PID_LOG", str(pid_log))
    coords = read_tile_set(cmu["tile_h5"]).coords
    files = []
    for i, part in enumerate((coords[:5], coords[5:6], coords[6:20])):
        files.append(tmp_path / "tiles" / f"s{i}.h5")
        _write_tile_file(files[-1], cmu["slide"], part, cmu["geometry"])
    summary = extract_many(files, encoder, tmp_path / "features", batch_size=4, num_workers=1, progress=False,
                           reader_factory=_pid_logging_reader)
    assert [s.n_tiles for s in summary.stats] == [5, 1, 14] and summary.precision["precision"] == "float32"
    pids = set(pid_log.read_text().split())
    assert len(pids) == 1 and pids != {str(os.getpid())}  # one worker, not the main process, for all slides
    joined = np.concatenate([read_features(tmp_path / "features" / f"s{i}.h5")[0] for i in range(3)])
    np.testing.assert_array_equal(joined, read_features(extracted[0])[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the AMP + channels_last path needs one")
def test_cuda_amp_channels_last_features_match_cpu_fp32(cmu, extracted, tmp_path):
    """On a GPU, auto = AMP (bf16 or fp16) + channels_last; its features stay close to the CPU fp32 ones."""
    gpu_encoder = build_encoder("resnet18", "random", seed=0)  # the shared fixture encoder stays on the CPU
    out = tmp_path / "cuda" / "CMU-1-Small-Region.h5"
    st = extract_slide_features(cmu["tile_h5"], gpu_encoder, out, batch_size=8, num_workers=1, device="cuda",
                                precision="auto", progress=False)
    assert st.n_tiles == N_TILES
    feats, _, attrs = read_features(out)
    assert attrs["device"] == "cuda" and bool(attrs["channels_last"])
    assert attrs["precision"] in ("bfloat16-autocast", "float16-autocast")
    ref = read_features(extracted[0])[0]
    cos = (feats * ref).sum(1) / (np.linalg.norm(feats, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.99, cos
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), np.linalg.norm(ref, axis=1), rtol=0.05)
