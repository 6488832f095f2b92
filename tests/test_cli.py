"""`slidemil` as a user meets it: --version, help on every option, predict that says what it wrote and never
creates an MLflow store, with a progress bar of the tiles read and encoded."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slidemil import __version__
from slidemil.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"slidemil {__version__}"


def test_every_option_of_every_command_has_help_and_shows_its_default():
    ap = build_parser()
    [sub] = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) >= {"info", "predict", "methods", "bundle-upgrade"}
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.dest}: no help"
        text = parser.format_help()
        assert "(default:" in text or name == "methods", name
    assert "(default: champion)" in " ".join(sub.choices["predict"].format_help().split())


def test_predict_without_a_store_creates_none(tmp_path, slides_dir):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    slide = next(p for p in sorted(slides_dir.iterdir()) if p.suffix in (".svs", ".tif", ".tiff", ".ndpi"))
    proc = subprocess.run([sys.executable, "-m", "slidemil.cli", "predict", str(slide), "--mpp", "0.5"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no MLflow store" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, no mlruns/, no experiment


@pytest.mark.slow
def test_predict_reports_progress_and_the_files_it_wrote(tmp_path):
    from serving.devserver import register_random_bundle
    from slidemil.demo.dataset import SyntheticSlideSpec, generate_slide

    svs = generate_slide(SyntheticSlideSpec("cli_slide", "c1", "subtype_a", 1400, 1200, 0.5, seed=3,
                                            tumour_fraction=0.1, tissue_coverage=0.6, n_tissue_pieces=1),
                         tmp_path / "slides")["slide"]
    register_random_bundle(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, "cli-model", seed=1,
                           heatmap={"canvas_max_side": 256})
    before = sorted(p.name for p in tmp_path.iterdir())
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-m", "slidemil.cli", "predict", str(svs), "--project", str(tmp_path),
                           "--model-name", "cli-model", "--out", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # stdout is the summary alone
    assert summary["slide_id"] == "cli_slide"
    assert "cli_slide: tiles read + encoded" in proc.stderr and "tile" in proc.stderr  # the tqdm bar
    for name in ("cli_slide_heatmap.png", "cli_slide_tiles.geojson"):
        assert (tmp_path / "out" / name).is_file()
        assert f"wrote {tmp_path / 'out' / name}" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "out"])  # nothing else appeared
