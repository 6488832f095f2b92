"""The real DVC pipeline on a small demo: repro, no-op repro, partial re-run, and a bad manifest stopping it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        DVC_NO_ANALYTICS="1",
        GX_ANALYTICS_ENABLED="false",
        PYTHONPATH=f"{cwd / 'src'}{os.pathsep}{cwd}",  # the copied project, not the editable install
    )
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _stages_run(proc: subprocess.CompletedProcess) -> set[str]:
    text = proc.stdout + proc.stderr
    return {s for s in ("synthesize", "validate", "tile") if f"Running stage '{s}'" in text}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    proj = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, proj / name)
    for name in ("pipelines", "config", "src"):
        shutil.copytree(ROOT / name, proj / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["synthesize"].update(n_cases=3, slides_per_case=2, width_um=800, height_um=600, workers=1)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], proj)
    _run([sys.executable, "-m", "dvc", "init", "-q"], proj)
    return proj


def test_repro_then_noop_then_partial(project):
    first = _run([sys.executable, "-m", "dvc", "repro", "tile"], project)
    assert _stages_run(first) == {"synthesize", "validate", "tile"}
    manifest = pd.read_csv(project / "data/validated/manifest.csv")
    assert len(manifest) == 6
    for sid in manifest["slide_id"]:
        assert (project / "data/tiles" / f"{sid}.h5").exists()
        assert (project / "data/qc" / f"{sid}.png").exists()
    assert (project / "data/reports/validation.html").exists()

    second = _run([sys.executable, "-m", "dvc", "repro", "tile"], project)
    assert _stages_run(second) == set(), second.stdout

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tiling"]["tile_px"] = 256
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = _run([sys.executable, "-m", "dvc", "repro", "tile"], project)
    assert _stages_run(third) == {"tile"}
    from slidemil.store import read_tile_set

    assert read_tile_set(project / "data/tiles" / f"{manifest['slide_id'][0]}.h5").geometry.tile_px == 256


def test_code_edits_rerun_the_work_not_just_the_stage(project):
    """Editing tissue-segmentation code re-tiles every slide (resume keys carry the code version, so the stage
    does not report stale tiles as skipped); editing a demo renderer file re-renders the demo."""
    import json

    _run([sys.executable, "-m", "dvc", "repro", "tile"], project)
    tissue = project / "src/slidemil/slides/tissue.py"
    tissue.write_text(tissue.read_text() + "\n# a changed segmentation constant would do the same\n")
    proc = _run([sys.executable, "-m", "dvc", "repro", "tile"], project)
    assert _stages_run(proc) == {"tile"}
    summary = json.loads((project / "data/reports/tiling.json").read_text())
    assert summary["n_done"] == summary["n_slides"] == 6 and summary["n_skipped"] == 0, summary

    slide = next((project / "data/demo/slides").glob("*.svs"))
    before = slide.stat().st_mtime_ns
    render = project / "src/slidemil/demo/render.py"
    render.write_text(render.read_text() + "\n# an edited renderer\n")
    proc = _run([sys.executable, "-m", "dvc", "repro", "tile"], project)
    assert {"synthesize", "validate"} <= _stages_run(proc)
    assert slide.exists() and slide.stat().st_mtime_ns != before  # rendered again, not skipped


def test_bad_manifest_stops_before_tiling(project):
    """A user's own manifest with bad rows: validate fails naming them, tile does not run."""
    df = pd.read_csv(project / "data/demo/manifest.csv")
    df["path"] = ["data/demo/" + p for p in df["path"]]
    bad = pd.concat([df, df.iloc[[0]]], ignore_index=True)  # duplicate slide_id
    bad.loc[1, "label"] = "unknown_class"
    bad.loc[2, "path"] = "data/demo/slides/does_not_exist.svs"
    bad.to_csv(project / "my_manifest.csv", index=False)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["manifest"] = "my_manifest.csv"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    tiles_before = {p: p.stat().st_mtime_ns for p in (project / "data/tiles").glob("*.h5")}

    proc = _run([sys.executable, "-m", "dvc", "repro", "tile"], project, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "duplicate slide_id" in out and "label not in the declared classes" in out
    assert "file does not exist" in out and df["slide_id"][2] in out
    assert "Running stage 'tile'" not in out
    assert {p: p.stat().st_mtime_ns for p in (project / "data/tiles").glob("*.h5")} == tiles_before
    assert '"success": false' in (project / "data/reports/validation.json").read_text()
