"""A tiling run killed midway and started again finishes with correct, complete outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from slidemil.data.manifest import read_manifest
from slidemil.data.tile_batch import SlideJob, TileOutputs, tile_slides
from slidemil.slides.tiling import TilingParams
from slidemil.slides.tissue import TissueParams
from slidemil.store import read_layer_attrs, read_tile_set

TILING = TilingParams(tile_px=128, target_mpp=0.5)


def _jobs(demo: Path) -> list[SlideJob]:
    df = read_manifest(demo / "manifest.csv")
    return [SlideJob(r.slide_id, r.abs_path) for r in df.itertuples()]


def _outputs(root: Path) -> TileOutputs:
    return TileOutputs(root / "tiles", root / "tissue", root / "qc")


def _run_script(demo: Path, root: Path) -> str:
    return textwrap.dedent(f"""
        import time
        from pathlib import Path
        from slidemil.data import tile_batch as batch
        from slidemil.data.tile_batch import tile_one, tile_slides
        from slidemil.slides.tiling import TilingParams
        from slidemil.slides.tissue import TissueParams
        from tests.test_resume import _jobs, _outputs

        def slow_tile_one(*a, **k):   # slow each slide down so the kill lands mid-run
            time.sleep(1.0)
            return tile_one(*a, **k)

        batch.tile_one = slow_tile_one
        tile_slides(_jobs(Path({str(demo)!r})), TilingParams(tile_px=128, target_mpp=0.5), TissueParams(),
                    _outputs(Path({str(root)!r})), workers=1, progress=False)
    """)


@pytest.mark.slow
def test_killed_run_resumes_to_identical_outputs(tmp_path, small_demo):
    jobs = _jobs(small_demo)
    reference = tmp_path / "reference"
    ref_results = tile_slides(jobs, TILING, TissueParams(), _outputs(reference), workers=1, progress=False)
    assert all(r.status == "done" for r in ref_results)

    interrupted = tmp_path / "interrupted"
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), str(root)]))  # this checkout's code
    proc = subprocess.Popen([sys.executable, "-c", _run_script(small_demo, interrupted)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = list((interrupted / "tiles").glob("*.h5")) if (interrupted / "tiles").exists() else []
        if len(done) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = {p.stem for p in (interrupted / "tiles").glob("*.h5")}
    assert 2 <= len(finished_before) < len(jobs), "the kill must land mid-run"
    assert all(read_layer_attrs(interrupted / "tiles" / f"{s}.h5", "tiles")["complete"] for s in finished_before)

    results = tile_slides(jobs, TILING, TissueParams(), _outputs(interrupted), workers=2, progress=False)
    status = {r.slide_id: r.status for r in results}
    assert {s for s, st in status.items() if st == "skipped"} == finished_before
    assert all(st in ("done", "skipped") for st in status.values())
    for job in jobs:
        got = read_tile_set(interrupted / "tiles" / f"{job.slide_id}.h5")
        want = read_tile_set(reference / "tiles" / f"{job.slide_id}.h5")
        np.testing.assert_array_equal(got.coords, want.coords)
        assert got.geometry == want.geometry
        got_p, want_p = (read_tile_set(r / "tiles" / f"{job.slide_id}.h5", "parents") for r in (interrupted, reference))
        np.testing.assert_array_equal(got_p.children, want_p.children)
        assert (interrupted / "qc" / f"{job.slide_id}.png").exists()
        assert (interrupted / "tissue" / f"{job.slide_id}.geojson").exists()
    leftovers = [p for p in interrupted.rglob(".*.tmp")]
    assert not leftovers, leftovers
