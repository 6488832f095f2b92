"""The BentoML service end to end: a real registry, a real `bentoml serve` process, real HTTP requests.

A small untrained (seeded) ABMIL bundle on random-weight ResNet-18 features is logged to a temporary MLflow
store and promoted to champion; the server loads it from there exactly as in production.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from serving.devserver import BentoServer, register_random_bundle
from slidemil.bundle import ModelBundle

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BENTOML = Path(sys.executable).with_name("bentoml")
MODEL = "serving-test"
CLASSES = ["normal", "subtype_a", "subtype_b"]
LIMIT_MB = 4.0
TIMEOUT = 120


# ---- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A temporary MLflow store with one registered champion bundle (model version 1)."""
    tmp = tmp_path_factory.mktemp("serving_store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    folder, result = register_random_bundle(
        uri,
        tmp,
        MODEL,
        encoder="resnet18",
        method="abmil",
        classes=tuple(CLASSES),
        seed=7,
        heatmap={"canvas_max_side": 512},
    )
    assert result["alias"] == "champion" and result["version"] == "1"
    bundle = ModelBundle.load(folder)
    return {"uri": uri, "bundle_dir": folder, "bundle": bundle, "weights_id": bundle.encoder.weights_id}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A demo .svs, a PNG crop of the same scene, and the bad inputs."""
    from slidemil.demo.dataset import SyntheticSlideSpec, generate_slide, render_region

    out = tmp_path_factory.mktemp("serving_inputs")
    spec = SyntheticSlideSpec(
        "demo_slide",
        "case1",
        "subtype_a",
        2000,
        1600,
        0.5,
        seed=1,
        tumour_fraction=0.1,
        tissue_coverage=0.6,
        n_tissue_pieces=1,
    )
    svs = generate_slide(spec, out)["slide"]
    small = SyntheticSlideSpec(
        "small_slide",
        "case2",
        "subtype_b",
        1200,
        1000,
        0.5,
        seed=2,
        tumour_fraction=0.1,
        tissue_coverage=0.6,
        n_tissue_pieces=1,
    )
    small_svs = generate_slide(small, out)["slide"]
    png = out / "tissue crop.png"
    Image.fromarray(render_region(spec, 500, 400, 1000, 800)).save(png)
    white = out / "white.png"
    Image.fromarray(np.full((600, 800, 3), 255, np.uint8)).save(white)
    fake_svs = out / "notes.svs"
    fake_svs.write_text("this is a text file, not a slide\n" * 20)
    txt = out / "notes.txt"
    txt.write_text("plain text\n")
    return {
        "svs": svs,
        "small_svs": small_svs,
        "png": png,
        "white": white,
        "fake_svs": fake_svs,
        "txt": txt,
        "dir": out,
    }


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    """`bentoml serve` as a subprocess on 127.0.0.1 with a low upload limit; stopped at the end."""
    tmp = tmp_path_factory.mktemp("serving_server")
    env = {
        "MLFLOW_TRACKING_URI": store["uri"],
        "BENTOML_HOME": str(tmp / "bentoml_home"),
        "SLIDEMIL_MODEL_NAME": MODEL,
        "SLIDEMIL_MAX_UPLOAD_MB": str(LIMIT_MB),
        "SLIDEMIL_REQUEST_TIMEOUT_S": "150",
        "SLIDEMIL_MAX_CONCURRENCY": "12",  # test_parallel_requests_agree sends 9 at once: all admitted
    }
    srv = BentoServer(env, tmp / "server.log")
    try:
        srv.start()
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(str(exc))
    try:
        yield {"url": srv.url, "log": srv.log_path}
    finally:
        srv.stop()


def _post_file(
    url: str, route: str, field: str, path: Path, name: str | None = None, **form
) -> requests.Response:
    data = {k: str(v) for k, v in form.items()}
    with open(path, "rb") as f:
        return requests.post(
            f"{url}/{route}", files={field: (name or path.name, f)}, data=data, timeout=TIMEOUT
        )


def _error(resp: requests.Response) -> dict:
    body = resp.json()
    assert isinstance(body, dict) and "error" in body, body
    return body


def _png(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "PNG"
    img.load()
    return img


# ---- tests ---------------------------------------------------------------------------------------------
def test_metadata_describes_the_champion(server, store):
    meta = requests.post(f"{server['url']}/metadata", json={}, timeout=TIMEOUT).json()
    assert meta["model"] == {"name": MODEL, "version": "1", "alias": "champion"}
    assert meta["classes"] == CLASSES
    assert meta["method"] == "abmil"
    assert meta["encoder"]["name"] == "resnet18" and meta["encoder"]["weights_id"] == store["weights_id"]
    assert meta["encoder"]["feature_dim"] == 512
    assert meta["tiling"]["tile_px"] == 224 and meta["tiling"]["target_mpp"] == 0.5
    assert meta["limits"]["max_upload_mb"] == LIMIT_MB


def test_predict_svs(server, inputs):
    resp = _post_file(server["url"], "predict", "slide", inputs["svs"], top_k=3)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    probs = out["probabilities"]
    assert set(probs) == set(CLASSES)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert out["label"] == max(probs, key=probs.get)
    n = out["n_tiles"]
    assert n >= 5
    heat = _png(out["heatmap_png_base64"])
    assert min(heat.size) > 16
    tiles = out["top_tiles"]
    assert [t["rank"] for t in tiles] == [1, 2, 3]
    scores = [t["score"] for t in tiles]
    assert scores == sorted(scores, reverse=True)
    for t in tiles:
        assert _png(t["png_base64"]).size == (224, 224)
        assert 0 <= t["x"] < 2000 and 0 <= t["y"] < 1600
    gj = out["geojson"]
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == n
    # the top tile is one of the GeoJSON tiles, with the same score
    first = gj["features"][0]["geometry"]["coordinates"][0]
    assert len(first) == 5 and first[0] == first[-1]
    corners = {tuple(f["geometry"]["coordinates"][0][0]) for f in gj["features"]}
    assert (tiles[0]["x"], tiles[0]["y"]) in corners
    # the slide is named as the pipeline names it (the file name without its extension)
    assert {f["properties"]["metadata"]["slide_id"] for f in gj["features"]} == {inputs["svs"].stem}
    assert out["model"]["version"] == "1"


def test_served_prediction_is_the_pipelines(server, store, inputs, tmp_path):
    """One scoring path: the served answer for a demo slide equals tile stage + features stage + the bundle's
    prediction from the store (same tiles, probabilities within 1e-5, same top tiles)."""
    from slidemil.data.tile_batch import SlideJob, TileOutputs, tile_one
    from slidemil.encoders.registry import build_encoder
    from slidemil.features.extract import extract_slide_features
    from slidemil.scoring import BundleScorer
    from slidemil.slides.tiling import TilingParams
    from slidemil.slides.tissue import TissueParams
    from slidemil.store import SlideStore
    from slidemil.training.data import store_source

    bundle = store["bundle"]
    spec = bundle.spec
    outputs = TileOutputs(tmp_path / "tiles", tmp_path / "tissue", tmp_path / "qc")
    tiling = TilingParams.from_dict({k: v for k, v in spec.tiling.items() if k != "workers"})
    job = SlideJob("demo_slide", str(inputs["svs"]))
    assert tile_one(job, tiling, TissueParams(**spec.tissue), outputs).status == "done"
    enc = bundle.encoder
    encoder = build_encoder(enc.name, enc.weights, seed=enc.seed)
    extract_slide_features(outputs.tiles_dir / "demo_slide.h5", encoder, tmp_path / "features" / "demo_slide.h5",
                           device="cpu", progress=False)
    store_ = SlideStore(outputs.tiles_dir, tmp_path / "features")
    piped = BundleScorer(bundle).score(store_source(store_).load("demo_slide"))

    resp = _post_file(server["url"], "predict", "slide", inputs["svs"], top_k=5)
    assert resp.status_code == 200, resp.text
    served = resp.json()
    coords = store_.tile_set("demo_slide").coords
    corners = [tuple(f["geometry"]["coordinates"][0][0]) for f in served["geojson"]["features"]]
    assert served["n_tiles"] == len(coords) and corners == [tuple(map(float, c)) for c in coords]
    for c in CLASSES:
        assert served["probabilities"][c] == pytest.approx(piped.probabilities[c], abs=1e-5)
    assert served["label"] == piped.label
    assert [(t["x"], t["y"]) for t in served["top_tiles"]] == [(t["x"], t["y"]) for t in piped.top_tiles(5)]


def test_png_needs_mpp(server, inputs):
    resp = _post_file(server["url"], "predict", "slide", inputs["png"])
    assert resp.status_code == 422, resp.text
    err = _error(resp)
    assert err["code"] == "missing_mpp"
    assert "tissue_crop.png" in err["error"] and "`mpp`" in err["error"]

    resp = _post_file(server["url"], "predict", "slide", inputs["png"], mpp=0.5)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["n_tiles"] >= 4 and sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("key", "name", "status", "needle"),
    [
        ("fake_svs", None, 415, "not a TIFF"),
        ("txt", None, 415, "unsupported file type .txt"),
        ("svs", "slide.exe", 415, "unsupported file type .exe"),
    ],
)
def test_not_a_slide(server, inputs, key, name, status, needle):
    resp = _post_file(server["url"], "predict", "slide", inputs[key], name=name)
    assert resp.status_code == status, resp.text
    assert needle in _error(resp)["error"]


def test_damaged_slides_are_4xx_naming_the_problem(server, inputs, tmp_path, slides_dir):
    """Truncated and cut-header slides: 422 with the problem (not 500, not 'plain image without mpp');
    a DICOM WSI is accepted and, lacking PixelSpacing, asks for `mpp`."""
    svs = inputs["svs"].read_bytes()
    cases = [
        ("short.svs", b"II*\x00\x07", "truncated_slide", "5 bytes, shorter than the 8-byte TIFF header"),
        ("half.svs", svs[: len(svs) // 2], "truncated_slide", "the file was cut short"),
        ("cut.svs", svs[:-100], "truncated_slide", "stores data up to byte"),
    ]
    for name, content, code, needle in cases:
        (tmp_path / name).write_bytes(content)
        resp = _post_file(server["url"], "predict", "slide", tmp_path / name)
        assert resp.status_code == 422, resp.text
        err = _error(resp)
        assert err["code"] == code and err["error"].startswith(f"{name}: ") and needle in err["error"], err
        assert "upload" not in err["error"].split(":")[0]  # the client's name, not the server's private one
    resp = _post_file(server["url"], "predict", "slide", slides_dir / "small_HE_dicom.dcm")
    assert resp.status_code == 422 and _error(resp)["code"] == "missing_mpp", resp.text
    assert requests.post(f"{server['url']}/health", json={}, timeout=TIMEOUT).status_code == 200


def test_no_tissue(server, inputs):
    resp = _post_file(server["url"], "predict", "slide", inputs["white"], mpp=0.5)
    assert resp.status_code == 422, resp.text
    err = _error(resp)
    assert err["code"] == "no_tissue" and "white.png" in err["error"]


def test_bad_parameters(server, inputs):
    resp = _post_file(server["url"], "predict", "slide", inputs["svs"], top_k=-1)
    assert resp.status_code == 400 and _error(resp)["code"] == "bad_top_k"
    resp = _post_file(server["url"], "predict", "slide", inputs["png"], mpp=0)
    assert resp.status_code == 400 and _error(resp)["code"] == "bad_mpp"
    resp = _post_file(server["url"], "predict", "slide", inputs["png"], mpp="abc")
    assert resp.status_code == 400  # BentoML's own validation error


def test_oversize_uploads_are_refused(server, inputs):
    limit = int(LIMIT_MB * 1024 * 1024)
    rng = np.random.default_rng(0)
    way_over = inputs["dir"] / "way_over.svs"
    way_over.write_bytes(b"II*\x00" + rng.bytes(limit + 3 * 1024 * 1024))
    resp = _post_file(server["url"], "predict", "slide", way_over)  # refused on Content-Length, body unread
    assert resp.status_code == 413 and _error(resp)["code"] == "too_large"
    just_over = inputs["dir"] / "just_over.svs"
    just_over.write_bytes(b"II*\x00" + rng.bytes(limit + 100 * 1024))
    resp = _post_file(server["url"], "predict", "slide", just_over)  # within form slack: refused after upload
    assert resp.status_code == 413 and "just_over.svs" in _error(resp)["error"]


def test_only_uploaded_files_are_read(server, inputs):
    url = server["url"]
    # a URL or a server path given as text in the file field is refused, never fetched or opened
    for text in ("http://127.0.0.1:9/slide.svs", str(inputs["svs"])):
        resp = requests.post(f"{url}/predict", files={"slide": (None, text)}, timeout=TIMEOUT)
        assert resp.status_code == 400, resp.text
    resp = requests.post(f"{url}/predict", json={"slide": str(inputs["svs"])}, timeout=TIMEOUT)
    assert resp.status_code == 415 and _error(resp)["code"] == "unsupported_media_type"
    # chunked upload without Content-Length: refused (the size limit needs it)
    resp = requests.post(
        f"{url}/predict",
        data=iter([b"--x\r\n", b"--x--\r\n"]),
        headers={"Content-Type": "multipart/form-data; boundary=x"},
        timeout=TIMEOUT,
    )
    assert resp.status_code == 411


def _write_bag(path: Path, n: int, d: int, weights_id: str, seed: int = 0) -> np.ndarray:
    from slidemil.store import write_features

    feats = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    coords = np.stack([np.arange(n) * 224, np.zeros(n)], axis=1).astype(np.int64)
    write_features(
        path, feats, coords, {"encoder": "resnet18", "weights_id": weights_id, "slide_id": path.stem}
    )
    return feats


def test_predict_features(server, store, inputs):
    path = inputs["dir"] / "bag.h5"
    feats = _write_bag(path, 40, 512, store["weights_id"])
    resp = _post_file(server["url"], "predict_features", "features", path)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["n_tiles"] == 40 and len(out["tile_scores"]) == 40 and len(out["coords"]) == 40
    # the server answers with the registered model: same numbers as the bundle in this process
    from slidemil.scoring import BundleScorer, slide_from_features

    expected = BundleScorer(store["bundle"]).score(slide_from_features("bag", feats, np.zeros((40, 2)), 224))
    assert out["label"] == expected.label
    for c in CLASSES:
        assert out["probabilities"][c] == pytest.approx(expected.probabilities[c], abs=1e-5)
    np.testing.assert_allclose(out["tile_scores"], expected.primary.values, atol=1e-5)
    assert out["score_layers"] == [{"name": "attention", "tile_set": "tiles", "kind": "attention",
                                    "class_name": expected.label,
                                    "description": expected.primary.description}]


def test_bad_feature_files(server, store, inputs):
    wrong = inputs["dir"] / "wrong_dim.h5"
    _write_bag(wrong, 10, 256, store["weights_id"])
    resp = _post_file(server["url"], "predict_features", "features", wrong)
    assert resp.status_code == 400
    err = _error(resp)
    assert err["code"] == "bad_feature_file" and "256" in err["error"] and "512" in err["error"]

    other = inputs["dir"] / "other_encoder.h5"
    _write_bag(other, 10, 512, "resnet18:some-other-weights")
    resp = _post_file(server["url"], "predict_features", "features", other)
    assert resp.status_code == 400 and _error(resp)["code"] == "encoder_mismatch"

    resp = _post_file(server["url"], "predict_features", "features", inputs["svs"], name="slide.h5")
    assert resp.status_code == 415

    import h5py

    linked = inputs["dir"] / "linked.h5"
    with h5py.File(linked, "w") as f:
        f["features"] = h5py.ExternalLink(str(wrong), "/features")
    resp = _post_file(server["url"], "predict_features", "features", linked)
    assert resp.status_code == 400 and "link" in _error(resp)["error"]


def test_read_bag_is_the_store_reader_under_the_clients_name(tmp_path):
    """Uploads go through the store's one reader; its refusals name the client's file, not the server's temp."""
    import h5py

    from serving.service import _read_bag
    from serving.uploads import ServingError

    good = tmp_path / "private-123.h5"
    feats = _write_bag(good, 12, 8, "w")
    got, coords, attrs = _read_bag(good, "bag.h5", 8, 100)
    np.testing.assert_array_equal(got, feats)
    assert coords.shape == (12, 2) and attrs["weights_id"] == "w"

    nan = tmp_path / "private-nan.h5"
    with h5py.File(nan, "w") as f:
        f["tiles/features"] = np.full((3, 8), np.nan, np.float32)
        f["tiles/coords"] = np.zeros((3, 2), np.int64)
        f.attrs.update(kind="features", format_version=2, complete=True)
    unfinished = tmp_path / "private-unfinished.h5"
    with h5py.File(unfinished, "w") as f:
        f["tiles/features"] = np.ones((3, 8), np.float32)
        f["tiles/coords"] = np.zeros((3, 2), np.int64)
        f.attrs.update(kind="features", format_version=2)
    cases = [
        (good, 16, 100, "dimension 8, but this model expects 16"),
        (good, 8, 5, "12 tiles exceed the limit of 5 (server setting SLIDEMIL_MAX_FEATURE_ROWS)"),
        (nan, 8, 100, "NaN or infinite"),
        (unfinished, 8, 100, "incomplete"),
    ]
    for path, dim, rows, message in cases:
        with pytest.raises(ServingError) as info:
            _read_bag(path, "bag.h5", dim, rows)
        err = info.value
        assert (err.status, err.code) == (400, "bad_feature_file")
        assert message in err.message and err.message.startswith("bag.h5: ") and "private" not in err.message


def test_health_after_bad_inputs(server):
    out = requests.post(f"{server['url']}/health", json={}, timeout=TIMEOUT).json()
    assert out["status"] == "ok" and out["model"]["version"] == "1"
    counts = out["requests"]
    assert counts.get("ok", 0) >= 3
    assert counts.get("unsupported_format", 0) >= 3 and counts.get("no_tissue", 0) >= 1
    assert counts.get("internal_error", 0) == 0
    assert requests.get(f"{server['url']}/readyz", timeout=10).status_code == 200


def test_parallel_requests_agree(server, inputs):
    slide = inputs["small_svs"]
    reference = _post_file(server["url"], "predict", "slide", slide, top_k=3).json()
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(_post_file, server["url"], "predict", "slide", slide, top_k=3) for _ in range(8)
        ]
        # health is async: it answers promptly while the model is busy with the queued predictions
        seen_busy = False
        for _ in range(20):
            t0 = time.perf_counter()
            health = requests.post(f"{server['url']}/health", json={}, timeout=5)
            assert health.status_code == 200 and time.perf_counter() - t0 < 5
            if health.json()["busy"]:
                seen_busy = True
                break
            time.sleep(0.5)
        responses = [f.result() for f in futures]
    assert seen_busy
    assert [r.status_code for r in responses] == [200] * 8
    for r in responses:
        out = r.json()
        assert out["probabilities"] == reference["probabilities"]
        assert out["n_tiles"] == reference["n_tiles"]
        assert [(t["x"], t["y"], t["score"]) for t in out["top_tiles"]] == [
            (t["x"], t["y"], t["score"]) for t in reference["top_tiles"]
        ]
        assert out["heatmap_png_base64"] == reference["heatmap_png_base64"]
    log = server["log"].read_text()
    assert "failed unexpectedly" not in log, log[-3000:]


# ---- packaging ---------------------------------------------------------------------------------------------
def _pyproject_deps() -> dict[str, str]:
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name.lower(): str(Requirement(d).specifier) for d in deps}


def test_bentofile_packages_follow_pyproject():
    from packaging.requirements import Requirement

    cfg = yaml.safe_load((ROOT / "serving" / "bentofile.yaml").read_text())
    pins = _pyproject_deps()
    for line in cfg["python"]["packages"]:
        req = Requirement(line)
        assert req.name.lower() in pins, f"{req.name} is not a project dependency"
        assert str(req.specifier) == pins[req.name.lower()], (
            f"{req.name}: bentofile {req.specifier} != pyproject"
        )
    assert "lightning" not in {Requirement(p).name for p in cfg["python"]["packages"]}


def test_bentoml_build(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "true"}
    proc = subprocess.run(
        [str(BENTOML), "build", "-f", "serving/bentofile.yaml", "-o", "tag", "."],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bentos = list((tmp_path / "bentoml_home" / "bentos" / "slidemil").glob("*/bento.yaml"))
    assert len(bentos) == 1
    bento = bentos[0].parent
    assert (bento / "src" / "serving" / "service.py").is_file()
    assert (bento / "src" / "slidemil" / "inference.py").is_file()  # src layout flattened beside serving/
    reqs = (bento / "env" / "python" / "requirements.txt").read_text().split()
    assert "torch==2.14.1" in reqs and "bentoml==1.4.39" in reqs
    assert not any(r.startswith("lightning") for r in reqs)


_IMPORT_PROBE = """
import sys, json
from pathlib import Path
from slidemil.bundle import ModelBundle
from slidemil.inference import SlidePredictor
import serving.service  # noqa: F401
bundle = ModelBundle.load(sys.argv[1])
predictor = SlidePredictor(bundle)
predictor.predict(sys.argv[2], top_k=2)
predictor.predict(sys.argv[3], mpp=0.5, top_k=2)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


#: imported only when installed (torch wraps them in try/except): not a requirement of the Bento
OPTIONAL_IMPORTS = {"pydot", "colorama"}


def _closure(requirements: list[str]) -> set[str]:
    """Distributions installed because of ``requirements`` (transitively, extras ignored)."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [Requirement(r).name for r in requirements]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for line in reqs:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):  # skip optional extras
                todo.append(req.name)
    return seen


def test_bento_packages_cover_a_real_prediction(store, inputs):
    """Every third-party module a prediction imports comes with the Bento's package list."""
    import importlib.metadata as md

    from packaging.utils import canonicalize_name

    cfg = yaml.safe_load((ROOT / "serving" / "bentofile.yaml").read_text())
    provided = _closure(cfg["python"]["packages"] + ["bentoml==1.4.39"])
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _IMPORT_PROBE,
            str(store["bundle_dir"]),
            str(inputs["svs"]),
            str(inputs["png"]),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = yaml.safe_load(proc.stdout.strip().splitlines()[-1])
    assert "lightning" not in modules and "torchmetrics" not in modules  # ~7 s of import kept off serving
    owners = md.packages_distributions()
    missing = {}
    for mod in modules:
        dists = {canonicalize_name(d) for d in owners.get(mod, [])}
        if dists and not dists & provided and "slidemil" not in dists and mod not in OPTIONAL_IMPORTS:
            missing[mod] = sorted(dists)
    assert not missing, f"imported at run time but not in serving/bentofile.yaml: {missing}"


def test_mean_pool_champion_serves_a_heatmap(inputs, tmp_path):
    """A pooling champion has no attention; it explains with tile contributions and still serves a heatmap."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, result = register_random_bundle(uri, tmp_path, MODEL, encoder="resnet18", method="mean_pool",
                                       classes=tuple(CLASSES), seed=3, heatmap={"canvas_max_side": 512})
    assert result["alias"] == "champion"
    env = {"MLFLOW_TRACKING_URI": uri, "BENTOML_HOME": str(tmp_path / "bentoml_home"), "SLIDEMIL_MODEL_NAME": MODEL}
    srv = BentoServer(env, tmp_path / "server.log")
    srv.start()
    try:
        resp = _post_file(srv.url, "predict", "slide", inputs["svs"], top_k=2)
    finally:
        srv.stop()
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["score_layer"] == {"name": "contribution", "kind": "contribution"}
    assert min(_png(out["heatmap_png_base64"]).size) > 16
    assert len(out["top_tiles"]) == 2 and len(out["geojson"]["features"]) == out["n_tiles"]
