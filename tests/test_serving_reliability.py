"""The service under hostile clients: stalled, oversize and abandoned uploads (raw sockets), uniform 4xx bodies
and quiet logs, jobs, the OpenAPI document, 50 concurrent job clients and 300 fuzzed uploads.

One real `bentoml serve` on 127.0.0.1 with small limits (4 MB uploads, 2 s upload stall timeout, 2 synchronous
requests in flight, 60 jobs / 12 MB queued) and an untrained ResNet-18 ABMIL bundle; slides are tiny demo
slides (a few tiles) so the load and fuzz runs stay within a few minutes.
"""

from __future__ import annotations

import json
import random
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from serving.devserver import BentoServer, register_random_bundle
from serving.loadgen import job_load
from slidemil import __version__

pytestmark = pytest.mark.slow

MODEL = "serving-reliability"
LIMIT_MB = 4
STALL_S = 2
SYNC_CONCURRENCY = 2
MAX_JOBS = 60
QUEUED_MB = 12
TIMEOUT = 120
_PART = b'--b\r\nContent-Disposition: form-data; name="slide"; filename="s.svs"\r\n\r\n'


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    from slidemil.demo.dataset import SyntheticSlideSpec, generate_slide

    out = tmp_path_factory.mktemp("reliability_slides")
    tiny = SyntheticSlideSpec("tiny_slide", "c1", "subtype_a", 900, 700, 0.5, seed=3, tumour_fraction=0.1,
                              tissue_coverage=0.7, n_tissue_pieces=1)
    white = out / "white.png"
    Image.fromarray(np.full((500, 600, 3), 255, np.uint8)).save(white)
    return {"tiny": generate_slide(tiny, out)["slide"], "white": white, "dir": out}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability_server")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    register_random_bundle(uri, tmp, MODEL, encoder="resnet18", method="abmil", seed=5,
                           heatmap={"canvas_max_side": 256})
    env = {
        "MLFLOW_TRACKING_URI": uri,
        "BENTOML_HOME": str(tmp / "bentoml_home"),
        "SLIDEMIL_MODEL_NAME": MODEL,
        "SLIDEMIL_MAX_UPLOAD_MB": str(LIMIT_MB),
        "SLIDEMIL_UPLOAD_TIMEOUT_S": str(STALL_S),
        "SLIDEMIL_MAX_CONCURRENCY": str(SYNC_CONCURRENCY),
        "SLIDEMIL_MAX_JOBS": str(MAX_JOBS),
        "SLIDEMIL_MAX_QUEUED_MB": str(QUEUED_MB),
        "SLIDEMIL_SPOOL_DIR": str(tmp / "spool"),
    }
    srv = BentoServer(env, tmp / "server.log")
    srv.start()
    try:
        yield {"url": srv.url, "port": srv.port, "log": srv.log_path, "pid": srv.proc.pid, "spool": tmp / "spool"}
    finally:
        srv.stop()


def _post(url: str, route: str, path: Path, name: str | None = None, **form) -> requests.Response:
    with open(path, "rb") as f:
        return requests.post(f"{url}/{route}", files={"slide": (name or path.name, f)},
                             data={k: str(v) for k, v in form.items()}, timeout=TIMEOUT)


def _raw(port: int, path: str, length: int, body: bytes = b"") -> socket.socket:
    """A multipart POST whose headers promise ``length`` bytes, of which only ``body`` is sent."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
              f"Content-Length: {length}\r\n\r\n".encode() + body)
    return s


def _answer(s: socket.socket) -> tuple[int, dict, dict]:
    """Status, headers and JSON body of the response on a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


def _health(url: str) -> dict:
    resp = requests.get(f"{url}/health", timeout=10)
    assert resp.status_code == 200
    return resp.json()


# ---- uploads that misbehave ---------------------------------------------------------------------------
def test_stalled_upload_times_out(server):
    part = _PART + b"II*\x00"
    for route in ("/predict", "/predict_job/submit"):
        t0 = time.perf_counter()
        s = _raw(server["port"], route, 100_000, part)
        status, _, body = _answer(s)
        s.close()
        elapsed = time.perf_counter() - t0
        assert status == 408 and body["code"] == "upload_timeout", body
        assert STALL_S <= elapsed < STALL_S + 5, elapsed
        assert "SLIDEMIL_UPLOAD_TIMEOUT_S" in body["error"]


def test_oversize_content_length_without_body_is_answered_at_once(server):
    t0 = time.perf_counter()
    s = _raw(server["port"], "/predict", 10 * 1024**3)
    status, _, body = _answer(s)
    s.close()
    assert status == 413 and body["code"] == "too_large" and "10240.0 MB" in body["error"]
    assert time.perf_counter() - t0 < 3


def test_client_disconnect_mid_upload_is_not_an_error(server):
    for route in ("/predict", "/predict_job/submit"):
        s = _raw(server["port"], route, 200_000, _PART + b"x" * 5000)
        time.sleep(0.3)
        s.close()
    time.sleep(1.0)
    assert _health(server["url"])["status"] == "ok"
    log = server["log"].read_text()
    assert log.count("client disconnected during the upload") == 2, log[-3000:]
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]


def test_job_queue_limit_on_bytes_answers_429_with_retry_after(server):
    """Uploads still arriving reserve their declared size: the third 4.5 MB upload passes the 12 MB queue."""
    declared = int(4.5 * 1024 * 1024)
    held = [_raw(server["port"], "/predict_job/submit", declared, _PART) for _ in range(2)]
    time.sleep(0.5)
    s = _raw(server["port"], "/predict_job/submit", declared)
    status, headers, body = _answer(s)
    s.close()
    assert status == 429 and body["code"] == "queue_full" and int(headers["retry-after"]) >= 1, body
    assert "SLIDEMIL_MAX_QUEUED_MB=12" in body["error"]
    for h in held:  # they stall out (408) and give their reservation back
        assert _answer(h)[0] == 408
        h.close()
    assert _health(server["url"])["queue"]["jobs"] == 0


# ---- one error shape, quiet logs --------------------------------------------------------------------
def test_every_4xx_has_the_same_json_shape(server, slides):
    url = server["url"]
    cases = [
        (requests.post(f"{url}/predict", files={"slide": (None, "http://127.0.0.1:9/x.svs")}, timeout=TIMEOUT),
         400, "not_a_file"),
        (requests.post(f"{url}/predict_job/submit", files={"slide": (None, "text")}, timeout=TIMEOUT),
         400, "not_a_file"),
        (_post(url, "predict", slides["tiny"], mpp="abc"), 400, "invalid_request"),
        (_post(url, "predict", slides["tiny"], name="x.exe"), 415, "unsupported_format"),
        (_post(url, "predict_job", slides["tiny"]), 405, "submit_jobs"),
        (requests.post(f"{url}/predict", json={}, timeout=TIMEOUT), 415, "unsupported_media_type"),
        (requests.get(f"{url}/predict_job/status", timeout=TIMEOUT), 400, "bad_request"),
    ]
    for resp, status, code in cases:
        body = resp.json()
        assert resp.status_code == status and isinstance(body, dict), (resp.status_code, body)
        assert body["code"] == code and isinstance(body["error"], str) and body["error"], body
    log = server["log"].read_text()
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]
    assert "refused (BadInput: file fields must carry an uploaded file" in log  # one WARNING line instead


# ---- jobs -------------------------------------------------------------------------------------------
def _wait(url: str, task_id: str, limit_s: float = 120) -> str:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        status = requests.get(f"{url}/predict_job/status", params={"task_id": task_id}, timeout=10).json()["status"]
        if status != "in_progress":
            return status
        time.sleep(0.3)
    raise AssertionError(f"job {task_id} still running after {limit_s} s")


def test_job_gives_the_synchronous_answer(server, slides):
    url = server["url"]
    t0 = time.perf_counter()
    resp = _post(url, "predict_job/submit", slides["tiny"], top_k=2)
    assert resp.status_code == 200 and time.perf_counter() - t0 < 5, resp.text
    task_id = resp.json()["task_id"]
    assert _wait(url, task_id) == "completed"
    job = requests.get(f"{url}/predict_job/get", params={"task_id": task_id}, timeout=TIMEOUT).json()
    sync = _post(url, "predict", slides["tiny"], top_k=2).json()
    assert job["probabilities"] == sync["probabilities"] and job["top_tiles"] == sync["top_tiles"]
    assert job["slide"] == "tiny_slide.svs" and job["slide_id"] == "tiny_slide"
    meta = job["geojson"]["features"][0]["properties"]["metadata"]
    assert meta["slide_id"] == "tiny_slide"  # named like the pipeline names it: no extension
    assert not any(server["spool"].iterdir())  # the spooled upload is gone with the job


def test_failed_job_keeps_the_refusal(server, slides):
    url = server["url"]
    task_id = _post(url, "predict_job/submit", slides["white"], mpp=0.5).json()["task_id"]
    assert _wait(url, task_id) == "failed"
    resp = requests.get(f"{url}/predict_job/get", params={"task_id": task_id}, timeout=TIMEOUT)
    assert resp.status_code == 422 and resp.json()["code"] == "no_tissue" and "white.png" in resp.json()["error"]


# ---- OpenAPI and probes ----------------------------------------------------------------------------
def test_openapi_describes_the_service(server):
    url = server["url"]
    spec = requests.get(f"{url}/docs.json", timeout=TIMEOUT).json()
    assert spec["info"]["title"] == "SlideMIL: whole-slide image classification"
    assert spec["info"]["version"] == __version__ and "/predict_job/submit" in spec["info"]["description"]
    predict = spec["paths"]["/predict"]["post"]["responses"]
    assert {"200", "400", "408", "413", "415", "422", "429", "503"} <= set(predict)
    assert "missing_mpp" in predict["422"]["description"] and "busy" in predict["429"]["description"]
    assert "queue_full" in spec["paths"]["/predict_job/submit"]["post"]["responses"]["429"]["description"]
    schemas = spec["components"]["schemas"]
    model = predict["200"]["content"]["application/json"]["schema"]  # BentoML inlines the typed model
    assert model["title"].startswith("PredictionResponse") and schemas[model["title"]]["type"] == "object"
    assert {"label", "probabilities", "slide_id", "geojson"} <= set(model["properties"])
    assert model["example"]["label"] == "subtype_a" and model["example"]["slide_id"] == "case_003_s0"
    assert set(schemas["ErrorResponse"]["properties"]) == {"error", "code"}
    for route in ("/health", "/metadata"):
        assert "get" in spec["paths"][route]
        assert requests.get(f"{url}{route}", timeout=TIMEOUT).status_code == 200
    assert requests.get(f"{url}/metadata", timeout=TIMEOUT).json()["limits"]["max_jobs"] == MAX_JOBS


# ---- load and fuzz ----------------------------------------------------------------------------------
def test_fifty_job_clients_and_the_synchronous_endpoint_under_load(server, slides):
    """50 clients submit at once: 50 results, 0 errors, /health answers throughout, RSS < 3 GB; synchronous
    requests meanwhile get 200 or 429 with Retry-After, never 504."""
    summary = job_load(server["url"], slides["tiny"], 50, sync_clients=6, server_pid=server["pid"], timeout_s=600)
    print(json.dumps(summary, indent=1))
    assert summary["successes"] == 50 and not summary["errors"], summary["errors"][:3]
    assert summary["health_polls"] > 10 and summary["health_failures"] == 0 and summary["health_max_s"] < 5
    assert summary["peak_rss_mb"] < 3 * 1024
    assert summary["submit_p95_s"] < 5  # a job id at once, even with the queue full
    sync = summary["sync"]["status_counts"]
    assert set(sync) <= {"200", "429"} and sync.get("429", 0) >= 6 - SYNC_CONCURRENCY
    assert summary["sync"]["retry_after_on_429"]


def _fuzz_inputs(slides: dict[str, Path], n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    svs = slides["tiny"].read_bytes()
    png = slides["white"].read_bytes()
    out: list[tuple[str, bytes]] = []
    suffixes = [".svs", ".tif", ".ndpi", ".png", ".jpg", ".dcm", ".txt", ""]
    while len(out) < n:
        kind = len(out) % 10
        if kind == 9:  # the intact slide under a name variant: the fuzz run also succeeds now and then
            out.append((rng.choice(["ok.svs", "OK.SVS", "ok slide.tiff", "ok.tif"]), svs))
        elif kind == 6:  # one byte flipped
            data = bytearray(svs)
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            out.append(("one_flip.svs", bytes(data)))
        elif kind in (0, 7):  # cut short
            out.append(("cut.svs", svs[: rng.randrange(0, len(svs))]))
        elif kind == 1:  # bytes flipped anywhere
            data = bytearray(svs)
            for _ in range(50):
                data[rng.randrange(len(data))] = rng.randrange(256)
            out.append(("flipped.svs", bytes(data)))
        elif kind == 2:  # the header and first directory damaged
            data = bytearray(svs)
            for _ in range(8):
                data[rng.randrange(min(512, len(data)))] = rng.randrange(256)
            out.append(("header.svs", bytes(data)))
        elif kind in (3, 8):  # random bytes under any name, sometimes with a real magic number
            magic = rng.choice([b"", b"II*\x00", b"MM\x00*", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\x00" * 128 + b"DICM"])
            out.append((f"random{rng.choice(suffixes)}", magic + rng.randbytes(rng.randrange(0, 4096))))
        elif kind == 4:  # a damaged PNG
            data = bytearray(png[: rng.randrange(8, len(png))])
            for _ in range(5):
                data[rng.randrange(len(data))] = rng.randrange(256)
            out.append(("damaged.png", bytes(data)))
        else:  # tiny TIFF-looking headers
            out.append(("short.svs", b"II*\x00" + rng.randbytes(rng.randrange(0, 12))))
    return out


def test_fuzzed_uploads_never_get_a_5xx(server, slides):
    url = server["url"]
    inputs = _fuzz_inputs(slides, 300)
    t0 = time.perf_counter()
    statuses: dict[int, int] = {}
    for name, content in inputs:
        resp = requests.post(f"{url}/predict", files={"slide": (name, content)}, data={"mpp": "0.5", "top_k": "1",
                             "heatmap": "false"}, timeout=60)
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
        assert resp.status_code < 500, (name, resp.status_code, resp.text[:300])
        body = resp.json()
        if resp.status_code >= 400:
            assert isinstance(body, dict) and body.get("code"), body
    elapsed = time.perf_counter() - t0
    print(f"fuzz: {len(inputs)} uploads in {elapsed:.1f} s: {dict(sorted(statuses.items()))}")
    assert elapsed < 600 and statuses.get(200, 0) >= 30  # the intact ones were answered
    assert _health(url)["requests"].get("internal_error", 0) == 0
