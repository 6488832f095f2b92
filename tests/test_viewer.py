"""The slide viewer's server side over plain HTTP: Deep Zoom tiles from slidemil's readers (a real SVS pyramid and
a plain image), the viewer manifest, score-layer and contour overlays, and refusals. The browser half is in
``test_dashboard_browser.py``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from tests.test_dashboard import SLIDE_DIMS, THUMB_DS, dashboard_project  # noqa: F401 - the session fixture


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def _image(body: bytes, flags=cv2.IMREAD_UNCHANGED) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(body, np.uint8), flags)


@pytest.fixture(scope="module")
def server(dashboard_project):  # noqa: F811 - pytest injects the imported fixture
    from dashboard.viewer_server import ViewerConfig, ViewerServer

    data = dashboard_project["root"] / "data"
    srv = ViewerServer(ViewerConfig(data / "heatmaps", data / "tissue", "clam_sb"))
    yield srv
    srv.close()


def test_deep_zoom_tiles_of_a_real_svs_pyramid(slides_dir):
    from slidemil.slides.backends import open_slide
    from slidemil.slides.deepzoom import DeepZoomSource

    path = slides_dir / "CMU-1-Small-Region.svs"
    src = DeepZoomSource(path)
    try:
        w, h = src.dimensions
        assert src.level_count == int(np.ceil(np.log2(max(w, h)))) + 1
        size = ET.fromstring(src.dzi()).find("{http://schemas.microsoft.com/deepzoom/2008}Size")
        assert (int(size.get("Width")), int(size.get("Height"))) == (w, h)
        # the deepest level is level 0: its first tile is the slide's first 255 x 255 px (254 + 1 overlap)
        tile = cv2.cvtColor(_image(src.tile(src.level_count - 1, 0, 0), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert tile.shape == (255, 255, 3)
        with open_slide(path) as reader:
            truth = reader.read_region((0, 0), 0, (255, 255))
        assert np.abs(tile.astype(int) - truth).mean() < 4  # JPEG only
        top = _image(src.tile(0, 0, 0), cv2.IMREAD_COLOR)
        assert top.shape[:2] == (1, 1)
        with pytest.raises(ValueError, match="no tile 99_0"):
            src.tile(src.level_count - 1, 99, 0)
    finally:
        src.close()


def test_manifest_names_layers_models_overlays_and_top_tiles(server, dashboard_project):  # noqa: F811
    status, ctype, body = _get(f"{server.url}/api/s00.json?families=clam_sb,abmil&cmap=viridis&blur_tiles=0.5")
    assert status == 200 and ctype == "application/json"
    m = json.loads(body)
    assert m["shows"] == "slide" and (m["slide_width"], m["slide_height"]) == SLIDE_DIMS
    assert [la["label"] for la in m["layers"]] == [
        "clam_sb fold 0 · attention (normal), within-slide percentile",
        "clam_sb fold 0 · tile probability (normal), probability",
        "abmil fold 0 · attention (normal), within-slide percentile"]
    legend = m["layers"][1]["legend"]
    assert legend["ticks"] == ["0.00", "0.25", "0.50", "0.75", "1.00"] and legend["model"] == "clam_sb fold 0"
    assert legend["colours"][0] == "#440154" and legend["colours"][-1] == "#fde725"  # viridis
    assert [c["id"] for c in m["contours"]] == ["tissue", "truth"]
    record = dashboard_project["records"]["s00"]
    assert [(t["x"], t["y"]) for t in m["top_tiles"]] == [(t["x"], t["y"]) for t in record["top_tiles"]]

    # s01: no slide file, so the stage's thumbnail stands in, and the manifest says so
    s01 = json.loads(_get(f"{server.url}/api/s01.json?families=clam_sb,abmil")[2])
    assert s01["shows"].startswith("thumbnail (") and [la["family"] for la in s01["layers"]] == ["clam_sb"]
    assert not any(c["id"] == "truth" for c in s01["contours"])


def test_tiles_follow_the_slide_and_deeper_levels_show_detail(server):
    dzi = ET.fromstring(_get(f"{server.url}/dz/s00.dzi")[2])
    size = dzi.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert (int(size.get("Width")), int(size.get("Height"))) == SLIDE_DIMS
    status, ctype, body = _get(f"{server.url}/dz/s00_files/12/8_6.jpeg")  # level 0, around the centre
    assert status == 200 and ctype == "image/jpeg"
    fine = _image(body, cv2.IMREAD_GRAYSCALE).astype(int)
    coarse = _image(_get(f"{server.url}/dz/s00_files/9/1_1.jpeg")[2], cv2.IMREAD_GRAYSCALE).astype(int)
    # the fixture's 6-px checker is resolved at level 0 only: neighbouring pixels differ there, not when 8x down
    assert np.abs(np.diff(fine, axis=1)).mean() > 3 * np.abs(np.diff(coarse, axis=1)).mean()


def test_overlays_are_transparent_outside_what_they_draw(server, dashboard_project):  # noqa: F811
    thumb_hw = (round(SLIDE_DIMS[1] / THUMB_DS), round(SLIDE_DIMS[0] / THUMB_DS))
    score = _image(_get(f"{server.url}/overlay/s00/clam_sb/0.png?cmap=viridis&blur_tiles=0")[2])
    assert score.shape == (*thumb_hw, 4)
    painted = score[..., 3] == 255
    assert set(np.unique(score[..., 3])) <= {0, 255} and 0.2 < painted.mean() < 0.6  # tiles inside the tissue
    assert not score[~painted, :3].any()
    smooth = _image(_get(f"{server.url}/overlay/s00/clam_sb/0.png?cmap=viridis&blur_tiles=1")[2])
    assert np.array_equal(smooth[..., 3], score[..., 3]) and not np.array_equal(smooth, score)
    other = _image(_get(f"{server.url}/overlay/s00/abmil/0.png?cmap=viridis&blur_tiles=0")[2])
    assert not np.array_equal(other, score)  # abmil's own map, not clam_sb's

    truth = _image(_get(f"{server.url}/overlay/s00/truth.png")[2])
    assert truth.shape == (3072, 4096, 4)
    ys, xs = np.nonzero(truth[..., 3])
    r = np.hypot(xs - 2600, ys - 1300)  # the ground-truth circle of the fixture, radius 420 px at level 0
    assert len(r) > 1000 and np.all(np.abs(r - 420) < 8)
    solid = truth[truth[..., 3] == 255]
    assert len(solid) > 1000 and np.all(solid[:, :3][:, ::-1] == (230, 30, 30))


@pytest.mark.parametrize("path", [
    "/api/..%2F..%2Fetc.json", "/static/../viewer_server.py", "/dz/s00_files/99/0_0.jpeg",
    "/overlay/s00/abmil/7.png", "/overlay/s01/truth.png", "/api/nope.json", "/dz/s02.dzi"])
def test_refusals_are_404_with_a_reason(server, path):
    status, ctype, body = _get(server.url + path)
    assert status == 404 and ctype.startswith("text/plain") and body
