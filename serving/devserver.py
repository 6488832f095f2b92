"""Run the real service for tests and benchmarks: a throwaway registered bundle and a `bentoml serve` process.

Not used by the service itself. :func:`register_random_bundle` puts an untrained (seeded) bundle into an
MLflow store as champion, so the server can start without a trained pipeline; :class:`BentoServer` starts
``bentoml serve serving.service:SlideMIL`` on 127.0.0.1 and stops exactly that server and its workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from serving.settings import PROJECT_ROOT

DEMO_CLASSES = ("normal", "subtype_a", "subtype_b")
DEMO_TILING = {
    "tile_px": 224,
    "target_mpp": 0.5,
    "stride_px": None,
    "min_tissue": 0.5,
    "multiscale_factor": 0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_random_bundle(
    tracking_uri: str,
    artifact_root: str | Path,
    model_name: str,
    *,
    encoder: str = "resnet18",
    method: str = "abmil",
    classes: tuple[str, ...] = DEMO_CLASSES,
    seed: int = 0,
    tiling: dict | None = None,
    heatmap: dict | None = None,
) -> tuple[Path, dict]:
    """Log a seeded, untrained bundle to ``tracking_uri`` and promote it; returns ``(folder, promotion)``.

    Runs in a child process: MLflow keeps the tracking URI and active experiment as process-wide state (and
    copies them into ``os.environ``), which must not leak into the caller (a test session, a benchmark).
    """
    spec = {
        "model_name": model_name,
        "artifact_root": str(artifact_root),
        "encoder": encoder,
        "method": method,
        "classes": list(classes),
        "seed": seed,
        "tiling": dict(tiling or DEMO_TILING),
        "heatmap": dict(heatmap or {"canvas_max_side": 1024}),
    }
    code = (
        "import json, sys; from serving.devserver import _register; "
        "print(json.dumps(_register(json.loads(sys.argv[1]))))"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_ENABLE_TELEMETRY": "false"}
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"registering a bundle failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return Path(result.pop("bundle_dir")), result


def _register(spec: dict) -> dict:
    """Child-process side of :func:`register_random_bundle` (tracking URI comes from the environment)."""
    import mlflow
    import torch

    from slidemil.bundle import ModelBundle
    from slidemil.encoders.registry import build_encoder
    from slidemil.mlflow_model import log_bundle
    from slidemil.registry import register_and_promote
    from slidemil.tracking import setup_tracking

    root = Path(spec["artifact_root"])
    setup_tracking(root, "serving-dev")
    enc = build_encoder(spec["encoder"], "random", seed=spec["seed"])
    cfg = {"in_dim": enc.feature_dim, "n_classes": len(spec["classes"])}
    torch.manual_seed(spec["seed"])
    bundle = ModelBundle.create(
        spec["method"],
        cfg,
        list(spec["classes"]),
        {"name": spec["encoder"], "weights": "random", "seed": spec["seed"], "weights_id": enc.weights_id,
         "feature_dim": enc.feature_dim},
        spec["tiling"],
        heatmap=spec["heatmap"],
        metadata={"purpose": "untrained bundle for serving tests and benchmarks", "seed": spec["seed"]},
    )
    folder = bundle.save(root / f"bundle-{spec['model_name']}")
    with mlflow.start_run(run_name=f"{spec['model_name']}-random") as run:
        info = log_bundle(folder)
    result = register_and_promote(info.model_uri, spec["model_name"], "val_auc", 0.5, run_id=run.info.run_id)
    return {"bundle_dir": str(folder), **result.to_dict()}


class BentoServer:
    """``with BentoServer(env, log) as srv: requests.post(srv.url + "/predict", ...)``; output -> ``log``."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: str | Path,
        *,
        port: int | None = None,
        ready_timeout_s: float = 180.0,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self.env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "MLFLOW_ENABLE_TELEMETRY": "false", **env}
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None

    def start(self) -> BentoServer:
        bentoml_cli = Path(sys.executable).with_name("bentoml")
        cmd = [
            str(bentoml_cli),
            "serve",
            "serving.service:SlideMIL",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                cwd=PROJECT_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server not ready after {self.ready_timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the arbiter, SIGKILL after ``grace_s``; then make sure its workers are gone too.

        BentoML's workers run in their own sessions (not the arbiter's process group) and a graceful shutdown
        waits for in-flight inference, so the worker pids are collected first and killed if they outlive it.
        """
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            workers = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            workers = []
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for w in workers:
            try:
                w.wait(timeout=5)
            except psutil.TimeoutExpired:
                w.kill()
                with contextlib.suppress(psutil.Error):
                    w.wait(timeout=5)
            except psutil.NoSuchProcess:
                pass

    def __enter__(self) -> BentoServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
