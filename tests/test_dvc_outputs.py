"""What `dvc metrics show` and `dvc plots show` give a reader: the evaluate stage's files through real DVC.

A throw-away DVC project holds this project's dvc.yaml, params.yaml, .dvc/config and .dvc/plots; the evaluate
stage writes its outputs from a small trained-families folder; then the real `dvc` renders them. The plots
page is opened in Debian's chromium with every non-file request refused (no CDN), and leaves a screenshot in
``test-artifacts/dvc_plots.png``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipelines.evaluate import HEADLINE, evaluate
from slidemil.evaluation.metrics import MICRO
from slidemil.evaluation.offline_plots import build
from tests.eval_fixtures import CLASSES, write_train_dir

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).with_name("dvc")
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
MODELS = list(PARAMS["train"]["models"])


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory) -> Path:
    if not DVC.exists():
        pytest.skip(f"{DVC} not found")
    root = tmp_path_factory.mktemp("dvcproj")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, root / name)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([str(DVC), "init", "--no-scm", "-q"], cwd=root, check=True, env=env)
    shutil.copy(ROOT / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", root / ".dvc" / "plots")
    # the vega packages are installed once per checkout (make setup); the template is written here
    offline = build(root / ".dvc" / "tmp" / "plots_offline.html", ROOT / ".dvc" / "tmp" / "vega")
    write_train_dir(root / "data" / "train", MODELS)
    ev = PARAMS["evaluate"]
    evaluate(root / "data" / "train", MODELS, CLASSES, ev["baseline"],
             {k: root / ev[k] for k in ("metrics", "headline_dir", "roc", "roc_dir", "confusion_dir")})
    root.joinpath("offline").write_text(str(offline))
    return root


def _dvc(root: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "COLUMNS": "400"}
    proc = subprocess.run([str(DVC), *args], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_metrics_show_is_a_narrow_headline_table(dvc_project):
    out = _dvc(dvc_project, "metrics", "show")
    lines = [line for line in out.splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 120, out
    header = lines[0].split()
    assert header[0] == "Path" and sorted(header[1:]) == sorted(MODELS)  # a column per family, nothing else
    assert len(lines) == 1 + len(HEADLINE)  # a row per headline metric
    row = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    auc = row[f"{PARAMS['evaluate']['headline_dir']}/test_auc.json"]
    assert auc[sorted(MODELS).index("clam_sb")] == "0.7"  # the fixture's clam_sb test AUC mean


def test_roc_table_has_monotone_curves_per_model_and_class(dvc_project):
    roc = pd.read_csv(dvc_project / PARAMS["evaluate"]["roc"])
    assert set(roc["model"]) == set(MODELS)
    assert set(roc["curve"]) == {MICRO, *CLASSES}
    for (model, curve), g in roc.groupby(["model", "curve"]):
        g = g.sort_values("step")
        assert (np.diff(g["fpr"]) >= 0).all() and (np.diff(g["tpr"]) >= 0).all(), (model, curve)
        assert g["fpr"].iloc[0] == g["tpr"].iloc[0] == 0 and g["fpr"].iloc[-1] == g["tpr"].iloc[-1] == 1
    conf = pd.read_csv(dvc_project / PARAMS["evaluate"]["confusion_dir"] / "clam_sb.csv")
    assert list(conf.columns) == ["actual", "predicted"] and set(conf["actual"]) == set(CLASSES)


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found: `apt-get install -y chromium`")
def test_plots_page_renders_offline_in_chromium(dvc_project):
    sync_api = pytest.importorskip("playwright.sync_api", reason="`pip install playwright` (no browser download)")
    if dvc_project.joinpath("offline").read_text() != "True":
        pytest.skip("npm could not install vega: the template uses DVC's CDN scripts")
    _dvc(dvc_project, "plots", "show", "-o", "plots_out")
    page_file = dvc_project / "plots_out" / "index.html"
    assert "cdn.jsdelivr" not in page_file.read_text()
    ARTIFACTS.mkdir(exist_ok=True)
    refused = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        def only_files(route):
            if route.request.url.startswith("file:"):
                route.continue_()
            else:
                refused.append(route.request.url)
                route.abort()

        page.route("**/*", only_files)
        page.goto(page_file.as_uri())
        page.wait_for_function("document.querySelectorAll('div[id] canvas').length >= 2", timeout=30_000)
        inked = page.evaluate("""() => [...document.querySelectorAll('div[id] canvas')].map(c => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && d[i] < 200) n++;
            return [c.closest('div[id]').id, n];
        })""")
        page.screenshot(path=str(ARTIFACTS / "dvc_plots.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert not refused, refused  # nothing left the machine: vega is inline
    by_div = dict(inked)
    roc = next(k for k in by_div if k.startswith("ROC"))
    assert by_div[roc] > 2000, inked  # the curves and axes were drawn, not a blank canvas
    assert any(k.startswith("Confusion") and v > 2000 for k, v in by_div.items()), inked
