"""The registered model is a complete MLflow model: signature, input example, real requirements, its own code,
and ``mlflow models serve -m models:/<name>@champion`` answers a feature-bag request."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from slidemil.bundle import ModelBundle
from slidemil.mlflow_model import SCORING_PACKAGES, log_bundle
from slidemil.registry import CHAMPION, register_and_promote
from slidemil.scoring import BundleScorer, slide_from_features
from slidemil.tracking import setup_tracking

DIM, CLASSES, NAME = 8, ["benign", "tumour"], "serve-test"


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    setup_tracking(root, "serve-test")
    torch.manual_seed(0)
    bundle = ModelBundle.create("abmil", {"in_dim": DIM, "n_classes": 2}, CLASSES,
                                {"name": "toy", "feature_dim": DIM}, {"tile_px": 224})
    folder = bundle.save(root / "bundle")
    with mlflow.start_run() as run:
        info = log_bundle(folder)
    register_and_promote(info.model_uri, NAME, "val_auc", 0.9, run_id=run.info.run_id)
    return root, mlflow.get_tracking_uri(), bundle, info


def test_logged_model_has_signature_example_and_installable_requirements(champion):
    _, _, _, info = champion
    assert info.signature is not None
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, DIM]
    assert [c["name"] for c in info.signature.outputs.to_dict()] == [*CLASSES, "label"]
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@{CHAMPION}"))
    reqs = (local / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in reqs} == set(SCORING_PACKAGES) and all("==" in r for r in reqs)
    assert not any(r.startswith("slidemil") for r in reqs)  # not on any index: the source travels instead
    assert (local / "code" / "slidemil" / "scoring.py").is_file()
    example = json.loads((local / "serving_input_example.json").read_text())
    assert np.asarray(example["inputs"]).shape[1] == DIM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_feature_bag(champion, tmp_path):
    root, uri, bundle, _ = champion
    port = _free_port()
    # `mlflow models serve` execs uvicorn from PATH: this interpreter's environment first
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)  # the model's own code (code_paths) must be enough
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{NAME}@{CHAMPION}",
                             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    feats = np.random.default_rng(1).normal(size=(5, DIM)).astype(np.float32)
    body = json.dumps({"inputs": feats.tolist()}).encode()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as r:
                    answer = json.loads(r.read())
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail(f"mlflow models serve did not answer:\n{(tmp_path / 'serve.log').read_text()[-3000:]}")
                time.sleep(0.5)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    [row] = answer["predictions"]
    expected = BundleScorer(bundle).score(slide_from_features("x", feats, np.zeros((5, 2), np.int64), 0),
                                          explain=False)
    assert row["label"] == expected.label
    for c in CLASSES:
        assert row[c] == pytest.approx(expected.probabilities[c], abs=1e-6)
