"""Stages killed mid-write, and projects moved on disk: no stray temp file, no work done twice."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from slidemil.data.tile_batch import SlideJob, TileOutputs, tile_one
from slidemil.encoders import build_encoder
from slidemil.features.extract import extract_many
from slidemil.slides.backends import open_slide
from slidemil.slides.tile_set import TileSetLayer
from slidemil.slides.tiling import TilingParams
from slidemil.slides.tissue import TissueParams
from slidemil.store.tile_sets import write_tile_sets

ROOT = Path(__file__).resolve().parents[1]


def _grid_tile_file(slide: Path, tiles_dir: Path, n: int) -> Path:
    """A tile file of ``n`` grid tiles (224 px at 0.5 um/px) of ``slide``."""
    with open_slide(slide) as reader:
        geometry = reader.tile_geometry(224, 0.5)
        w, h = reader.dimensions
    step = geometry.level0_px
    grid = [(x, y) for y in range(0, h - step + 1, step) for x in range(0, w - step + 1, step)]
    coords = np.array((grid * (n // len(grid) + 1))[:n], dtype=np.int64)  # repeats are fine for timing
    path = tiles_dir / "cmu.h5"
    tiles = TileSetLayer("tiles", "cmu", str(slide), coords, geometry, np.ones(n, np.float32))
    write_tile_sets(path, [tiles], attrs={"width": w, "height": h}, resume_key="tiles-v1")
    return path


def _run_features_stage(params: Path) -> subprocess.Popen:
    env = {**os.environ, "SLIDEMIL_PARAMS": str(params), "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    return subprocess.Popen([sys.executable, "-m", "pipelines.features"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_features_stage_leaves_no_temp_file_after_the_rerun(tmp_path, slides_dir):
    tiles_dir, out_dir = tmp_path / "tiles", tmp_path / "features"
    _grid_tile_file(slides_dir / "CMU-1-Small-Region.svs", tiles_dir, n=600)
    manifest = tmp_path / "validated.csv"
    manifest.write_text("slide_id,case_id,path,label\ncmu,c1,x.svs,benign\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["validate"]["manifest_out"] = str(manifest)
    params["tile"]["tiles_dir"] = str(tiles_dir)
    params["features"].update(out_dir=str(out_dir), summary=str(tmp_path / "features.json"), num_workers=0,
                              batch_size=8, device="cpu", tile_sets=["tiles"])  # the tile file has no parents
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))

    proc = _run_features_stage(params_path)
    deadline = time.monotonic() + 120
    while not list(out_dir.glob(".*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no cleanup code runs: what `kill -9` or the OOM killer leaves
    proc.wait(30)
    left = list(out_dir.glob(".*.tmp"))
    assert proc.returncode == -signal.SIGKILL and len(left) == 1 and left[0].name.startswith(".cmu.h5."), \
        "the kill must land while the feature file is being written"
    assert not (out_dir / "cmu.h5").exists()
    assert ".*.tmp" in (ROOT / ".dvcignore").read_text().split(), "DVC must not record the writer's temp files"

    rerun = _run_features_stage(params_path)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert "removed 1 temporary file(s) left by an interrupted run" in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["cmu.h5"]


def test_moved_project_retiles_and_reencodes_nothing(tmp_path, slides_dir):
    """Resume keys hold no absolute path: a project moved (or cloned) with its data/ redoes no work."""
    def layout(root: Path) -> tuple[Path, TileOutputs, Path]:
        return (root / "data" / "slides" / "cmu.svs",
                TileOutputs(root / "data" / "tiles", root / "data" / "tissue", root / "data" / "qc"),
                root / "data" / "features")

    slide, outputs, features = layout(tmp_path / "a")
    slide.parent.mkdir(parents=True)
    shutil.copy(slides_dir / "CMU-1-Small-Region.svs", slide)
    outputs.make()
    tissue = TissueParams()
    assert tile_one(SlideJob("cmu", str(slide)), TilingParams(), tissue, outputs).status == "done"
    encoder = build_encoder("resnet18", "random", seed=0)
    first = extract_many([outputs.tiles_dir / "cmu.h5"], encoder, features, batch_size=16, device="cpu",
                         progress=False)
    assert [s.skipped for s in first.stats] == [False] and first.n_tiles > 0
    feature_bytes = (features / "cmu.h5").read_bytes()

    shutil.move(tmp_path / "a", tmp_path / "moved")
    slide, outputs, features = layout(tmp_path / "moved")
    assert tile_one(SlideJob("cmu", str(slide)), TilingParams(), tissue, outputs).status == "skipped"
    again = extract_many([outputs.tiles_dir / "cmu.h5"], encoder, features, batch_size=16, device="cpu",
                         progress=False)
    assert [s.skipped for s in again.stats] == [True]
    assert (features / "cmu.h5").read_bytes() == feature_bytes

