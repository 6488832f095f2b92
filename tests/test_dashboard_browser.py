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
            pred = dashboard_project["index"].set_index("slide_id").loc["s00", "pred"]
            page.locator('[data-testid="stMetricValue"]', has_text=pred).first.wait_for()
            page.wait_for_timeout(500)  # let the top-tile gallery finish painting
            shot = ARTIFACTS / "dashboard_slides.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


def _png_pixels(data: bytes):
    import cv2
    import numpy as np

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).astype(int)


def _changed(a, b) -> float:
    """Share of pixels whose colour moved by more than a little (JPEG and resampling noise stays below)."""
    return float((abs(a - b).max(axis=2) > 24).mean())


def _settle(frame, requests: list[str], done: list[str], quiet_ms: int = 700, timeout_ms: int = 30_000) -> None:
    """Wait until every request the page made has been answered and none came for ``quiet_ms`` (the first
    tile of a plain-image slide waits for its decode)."""
    deadline = time.monotonic() + timeout_ms / 1000
    seen = -1
    while time.monotonic() < deadline:
        if len(requests) == seen and len(done) >= len(requests):
            break
        seen = len(requests)
        frame.wait_for_timeout(quiet_ms)
    frame.wait_for_timeout(400)  # the last tiles' fade-in


def _levels(requests: list[str]) -> list[int]:
    import re

    return [int(m[1]) for u in requests if (m := re.search(r"/dz/s00_files/(\d+)/\d+_\d+\.jpeg", u))]


def test_slide_viewer_worklist_and_side_by_side_in_chromium(dashboard_url, dashboard_project):  # noqa: F811
    """The Slides page in a real browser: the viewer zooms (deeper Deep Zoom levels are requested from the tile
    server and the canvas changes), overlays toggle, the legend names layer, scale and model, the worklist
    filter changes the rows, and two models' heatmaps render side by side."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="`pip install playwright` (no browser download)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(60_000)
            requests: list[str] = []
            done: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfinished", lambda r: done.append(r.url))
            page.on("requestfailed", lambda r: done.append(r.url))
            page.goto(f"{dashboard_url}/slides")
            page.get_by_role("heading", name="Worklist").wait_for()
            page.get_by_text("2 of 2 slides").wait_for()

            frame_el = page.locator("iframe").first
            frame_el.wait_for()
            frame = frame_el.element_handle().content_frame()
            frame.locator("body[data-ready='1']").wait_for()
            _settle(frame, requests, done)
            osd = frame.locator("#osd")

            legend = frame.locator("[data-testid='viewer-legend']")
            legend.wait_for(state="visible")
            text = legend.inner_text()
            assert "attention (normal), within-slide percentile" in text and "model: clam_sb fold 0" in text, text
            assert [t.strip() for t in frame.locator("#legend-ticks span").all_inner_texts()] == [
                "0", "25", "50", "75", "100"]
            options = frame.locator("#layer option").all_inner_texts()
            assert any(o.startswith("abmil fold 0 · attention") for o in options), options  # any model's layers
            assert frame.locator(".top-tile").count() == 3
            page.screenshot(path=str(ARTIFACTS / "dashboard_slides_viewer.png"), full_page=True)

            with_layer = _png_pixels(osd.screenshot())
            frame.locator("#layer").select_option("")  # score layer off
            _settle(frame, requests, done)
            plain = _png_pixels(osd.screenshot())
            assert legend.is_hidden()
            assert _changed(with_layer, plain) > 0.05

            frame.locator("#c-truth").check()  # ground-truth contour on
            _settle(frame, requests, done)
            truth = _png_pixels(osd.screenshot())
            assert 0.001 < _changed(plain, truth) < 0.2
            red = (truth[..., 2] > 180) & (truth[..., 1] < 90) & (truth[..., 0] < 90)  # BGR
            assert red.sum() > 200

            before = max(_levels(requests))
            frame.evaluate("() => { const v = window.slidemilViewer; v.viewport.zoomBy(12); "
                           "v.viewport.applyConstraints(true); }")
            _settle(frame, requests, done)
            zoomed = _png_pixels(osd.screenshot())
            deeper = max(_levels(requests))
            assert deeper > before, (before, deeper)
            assert deeper == 12  # 4096 px wide: level 12 is level 0 of the slide, where the checker shows
            assert _changed(truth, zoomed) > 0.2
            (ARTIFACTS / "viewer_zoomed.png").write_bytes(osd.screenshot())

            # back to the whole slide with clam_sb's attention for the closing screenshot
            frame.locator("#layer").select_option(index=1)
            frame.evaluate("() => window.slidemilViewer.viewport.goHome(true)")
            _settle(frame, requests, done)

            # side by side: clam_sb and abmil on s00
            box = page.get_by_role("combobox", name="Compare with")
            box.click()
            box.fill("abmil")  # the options filter as one types; Enter picks the one left
            page.get_by_role("option").filter(has_text="abmil").wait_for()
            page.keyboard.press("Enter")
            page.get_by_text("on s00").first.wait_for()
            imgs = page.locator("[data-testid='stImage'] img")
            page.get_by_text("s00: heatmap of abmil fold 0").first.wait_for()
            page.get_by_text("s00: heatmap of clam_sb fold 0").first.wait_for()
            for i in range(2):
                page.wait_for_function("img => img.complete && img.naturalWidth > 512", arg=imgs.nth(i).element_handle())
            page.set_viewport_size({"width": 1400, "height": 3000})  # Streamlit scrolls inside: show it all
            page.wait_for_timeout(800)
            shot = ARTIFACTS / "dashboard_slides_after.png"
            page.screenshot(path=str(shot), full_page=True)
            page.set_viewport_size({"width": 1400, "height": 1400})
            assert shot.stat().st_size > 10_000

            # worklist: misclassified only leaves s01
            page.get_by_text("Misclassified only").click()
            page.get_by_text("1 of 2 slides").wait_for()
            page.get_by_text("Misclassified (clam_sb fold 0 model, test split)").wait_for()
            page.get_by_text("Misclassified only").click()
            page.get_by_text("2 of 2 slides").wait_for()
        finally:
            browser.close()


def test_segments_toggle_in_chromium(dashboard_url, dashboard_project):  # noqa: F811
    """A SAM-MIL-style record (the stage's ``segments`` entry): clicking "Segments (kmeans)" draws the tiles
    coloured by segment as one more image."""
    import json

    import numpy as np

    from pipelines.heatmaps import segments_entry
    from slidemil.methods import SlideData, TileSetView
    from slidemil.methods.sammil import SamMILMethod
    from slidemil.segmenters.segments import from_groups

    sync_api = pytest.importorskip("playwright.sync_api", reason="`pip install playwright` (no browser download)")
    f = dashboard_project
    path = f["root"] / "data" / "heatmaps" / "s00" / "models" / "clam_sb" / "record.json"
    original = path.read_text()
    coords = f["coords"].astype(np.int64)
    n = len(coords)
    seg = from_groups(n, [np.arange(0, n // 2), np.arange(n // 2, n - 3)], [400.0, 300.0], 1.0)
    slide = SlideData("s00", None, {"tiles": TileSetView(coords, 256)}, {"tiles": np.zeros((n, 4), np.float32)},
                      {"segments": seg})
    path.write_text(json.dumps({**json.loads(original), "segments": segments_entry(slide, SamMILMethod, "kmeans")}))
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1200})
                page.set_default_timeout(60_000)
                page.goto(dashboard_url)
                page.locator('[data-testid="stSidebarNav"]').get_by_text("Slides", exact=True).click()
                toggle = page.get_by_text("Segments (kmeans)", exact=True).first
                toggle.wait_for()
                toggle.click()
                caption = page.get_by_text("2 segments of segmenter kmeans", exact=False).first
                caption.wait_for()
                img = page.locator('[data-testid="stImage"]', has_text="segmenter kmeans").locator("img").first
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
                assert img.evaluate("img => img.naturalWidth") >= 512
            finally:
                browser.close()
    finally:
        path.write_text(original)
