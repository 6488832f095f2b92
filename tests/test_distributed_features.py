"""The features stage on 2 CPU processes (torchrun, gloo) writes the same feature files as one process, each
slide once; a rerun skips every slide on every rank; rank 0 alone writes the summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from slidemil.slides.backends import open_slide
from slidemil.slides.tile_set import TileSetLayer
from slidemil.store import read_feature_layer, write_tile_sets
from slidemil.utils.distributed import Ranks, ranks_from_env

ROOT = Path(__file__).resolve().parents[1]
TILES_PER_SLIDE = 6
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                "SLURM_LOCALID", "SLIDEMIL_PARAMS")


def test_ranks_come_from_torchrun_or_slurm_and_shards_cover_every_slide_once():
    assert ranks_from_env({}) == Ranks()
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert ranks_from_env(torchrun) == Ranks(1, 2, 1, "torchrun", 2)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x2)"}
    assert ranks_from_env(slurm) == Ranks(5, 8, 1, "slurm", 4)
    assert Ranks(1, 2, 1).device("auto") == ("cuda:1" if torch.cuda.device_count() > 1 else
                                             "cuda:0" if torch.cuda.is_available() else "cpu")
    items = [f"s{i}" for i in range(11)]
    shards = [Ranks(r, 4).shard(items) for r in range(4)]
    assert sorted(sum(shards, [])) == sorted(items) and shards[1] == ["s1", "s5", "s9"]
    with pytest.raises(ValueError, match="world size 2"):
        Ranks(2, 2)


@pytest.fixture(scope="module")
def cohort(small_demo, tmp_path_factory):
    """Tile files of the 6 synthetic demo slides (a few grid tiles each) and a params file for the stage."""
    root = tmp_path_factory.mktemp("dist")
    manifest = small_demo / "manifest.csv"
    import pandas as pd

    slides = pd.read_csv(manifest, dtype=str)
    for r in slides.itertuples():
        path = (small_demo / r.path).resolve()
        with open_slide(path) as reader:
            geom = reader.tile_geometry(224, 0.5)
            step, (w, _) = geom.level0_px, reader.dimensions
            coords = np.array([(x, 0) for x in range(0, w - step + 1, step)][:TILES_PER_SLIDE], np.int64)
        tiles = TileSetLayer("tiles", r.slide_id, str(path), coords, geom, np.ones(len(coords), np.float32))
        write_tile_sets(root / "tiles" / f"{r.slide_id}.h5", [tiles], resume_key="cfg")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["validate"]["manifest_out"] = str(manifest)
    params["tile"]["tiles_dir"] = str(root / "tiles")
    params["features"].update(encoder={"name": "resnet18", "weights": "random", "seed": 0}, tile_sets=["tiles"],
                              batch_size=4, num_workers=0, device="cpu")
    return root, params, list(slides["slide_id"])


def _run_stage(root: Path, params: dict, name: str, nproc: int) -> tuple[Path, float]:
    out = root / name
    params = {**params, "features": {**params["features"], "out_dir": str(out / "features"),
                                      "summary": str(out / "features.json")}}
    (root / f"{name}.yaml").write_text(yaml.safe_dump(params))
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env |= {"SLIDEMIL_PARAMS": str(root / f"{name}.yaml"), "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}",
            "OMP_NUM_THREADS": "1"}  # what torchrun gives each of several processes: same threads both ways
    launch = (["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else [])
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *launch, "-m", "pipelines.features"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, seconds


@pytest.mark.slow
def test_two_processes_write_the_same_features_as_one(cohort):
    root, params, slide_ids = cohort
    one, t1 = _run_stage(root, params, "one", 1)
    two, t2 = _run_stage(root, params, "two", 2)
    print(f"features stage, {len(slide_ids)} slides x {TILES_PER_SLIDE} tiles: 1 process {t1:.1f} s, "
          f"2 processes (torchrun, gloo) {t2:.1f} s")
    files = sorted(p.name for p in (two / "features").iterdir())
    assert files == sorted(f"{s}.h5" for s in slide_ids)  # every slide, once, no temporaries left
    for s in slide_ids:
        a, b = (read_feature_layer(d / "features" / f"{s}.h5") for d in (one, two))
        assert a.features.shape == (TILES_PER_SLIDE, 512)
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.coords, b.coords)
        assert a.attrs == b.attrs  # resume key, encoder identity, device, precision: all as one process
    assert json.loads((one / "features.json").read_text()) == json.loads((two / "features.json").read_text())

    mtimes = {p.name: p.stat().st_mtime_ns for p in (two / "features").iterdir()}
    (two / "features.json").unlink()
    _run_stage(root, params, "two", 2)  # resumed: nothing to encode on any rank
    assert {p.name: p.stat().st_mtime_ns for p in (two / "features").iterdir()} == mtimes
    summary = json.loads((two / "features.json").read_text())
    assert summary["n_slides"] == len(slide_ids) and summary["n_tiles"] == 0  # tiles encoded by this run


@pytest.mark.slow
def test_a_failing_slide_fails_every_rank_without_a_hang(cohort):
    root, params, slide_ids = cohort
    (root / "tiles" / f"{slide_ids[1]}.h5").rename(root / "moved.h5")  # rank 1's first slide
    try:
        out = root / "broken"
        params = {**params, "features": {**params["features"], "out_dir": str(out / "features"),
                                          "summary": str(out / "features.json")}}
        (root / "broken.yaml").write_text(yaml.safe_dump(params))
        env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
        env |= {"SLIDEMIL_PARAMS": str(root / "broken.yaml"), "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"}
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                               "-m", "pipelines.features"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
    finally:
        (root / "moved.h5").rename(root / "tiles" / f"{slide_ids[1]}.h5")
    assert proc.returncode != 0
    assert "feature extraction failed for 1 slide(s)" in proc.stderr and f"  {slide_ids[1]}: " in proc.stderr
    assert not (out / "features.json").exists()
    assert sorted(p.name for p in (out / "features").iterdir()) == sorted(
        f"{s}.h5" for s in slide_ids if s != slide_ids[1])  # the other slides are done (a rerun resumes)
