"""The real dashboard in a real browser: `streamlit run` on the fixture project, driven by Debian's chromium.

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright install``: the system
browser is used, nothing is downloaded). Leaves a screenshot in ``test-artifacts/dashboard_slides.png``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_dashboard import APP, dashboard_project  # noqa: F401 - the session fixture is shared

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found: `apt-get install -y chromium`"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def dashboard_url(dashboard_project, tmp_path):  # noqa: F811 - pytest injects the imported fixture
    port = _free_port()
    env = {**os.environ, "SLIDEMIL_PROJECT_ROOT": str(dashboard_project["root"]), "HOME": str(tmp_path),
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    for var in ("MLFLOW_TRACKING_URI", "SLIDEMIL_MODEL_NAME", "SLIDEMIL_PARAMS"):
        env.pop(var, None)
    log = open(tmp_path / "streamlit.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none", "--client.toolbarMode", "viewer"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"streamlit did not start:\n{(tmp_path / 'streamlit.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_dashboard_in_chromium(dashboard_url, dashboard_project):  # noqa: F811
    sync_api = pytest.importorskip("playwright.sync_api", reason="`pip install playwright` (no browser download)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.set_default_timeout(60_000)
            page.goto(dashboard_url)
            page.get_by_role("heading", name="Runs").wait_for()
            page.get_by_text("Metrics (mean ± std over folds)").wait_for()
            page.locator(".js-plotly-plot").first.wait_for()  # plotly is a lazily loaded chunk
            page.screenshot(path=str(ARTIFACTS / "dashboard_runs.png"), full_page=True)

            nav = page.locator('[data-testid="stSidebarNav"]')
            nav.get_by_text("Registry", exact=True).click()
            page.get_by_role("heading", name="Model registry").wait_for()
            page.get_by_text("champion: no champion yet").wait_for()
            page.get_by_text("All versions").wait_for()
            page.locator('[data-testid="stMetricValue"]', has_text="v1").wait_for()
            page.wait_for_timeout(300)
            page.screenshot(path=str(ARTIFACTS / "dashboard_registry.png"), full_page=True)

            nav.get_by_text("Data", exact=True).click()
            page.get_by_text("FAILED: 1 bad row(s) of 12").wait_for()
            page.screenshot(path=str(ARTIFACTS / "dashboard_data.png"), full_page=True)

            nav.get_by_text("Slides", exact=True).click()
            page.get_by_role("heading", name="Slides").wait_for()
            heatmap = page.locator('[data-testid="stImage"] img').first
            heatmap.wait_for()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=heatmap.element_handle())
            natural = heatmap.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            # the thumbnail (512 x 384) plus the stage's title line above and labelled colour bar on its right
            assert natural[1] > 384 and natural[0] > 512, natural
            page.get_by_text(dashboard_project["index"].set_index("slide_id").loc["s00", "pred"]).first.wait_for()
            page.wait_for_timeout(500)  # let the top-tile gallery finish painting
            shot = ARTIFACTS / "dashboard_slides.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
