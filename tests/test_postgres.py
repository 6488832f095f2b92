"""Scale-out stores on a real PostgreSQL: one Optuna study shared by 2 worker processes, and an MLflow tracking
server (PostgreSQL backend, served artifact store) receiving a real training run over HTTP.

PostgreSQL comes from ``$SLIDEMIL_TEST_POSTGRES_URL`` (`.ci/run` starts one) or is started here from Debian's
binaries; without either the tests skip, saying so.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy

from slidemil.data.splits import SplitConfig, make_splits
from tests.postgres import URL_ENV, new_database, throwaway_cluster
from tests.synthetic_bags import feature_bags

ROOT = Path(__file__).resolve().parents[1]
ENV = {**{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "SLIDEMIL_TUNE_WORKER")},
       "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "MLFLOW_ENABLE_TELEMETRY": "false"}


@pytest.fixture(scope="module")
def postgres():
    with throwaway_cluster() as url:
        if url is None:
            pytest.skip(f"no PostgreSQL: set {URL_ENV} or install Debian's postgresql (initdb, pg_ctl)")
        yield url


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """``mlflow server`` on a PostgreSQL backend, artifacts served from a folder; yields (url, db url, folder)."""
    db = new_database(postgres, "mlflow")
    artifacts = tmp_path_factory.mktemp("artifacts")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db,
                               "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"mlflow server did not come up: {server.stderr.read()[-3000:]}")
        time.sleep(0.5)
    yield url, db, artifacts
    server.terminate()
    server.wait(30)


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    root = tmp_path_factory.mktemp("pg-bags")
    slides = feature_bags(root / "features", n_cases=12)
    splits = make_splits(slides, SplitConfig(folds=1, val_frac=0.25, test_frac=0.25))
    slides.to_csv(root / "slides.csv", index=False)
    splits.to_csv(root / "splits.csv", index=False)
    return root, slides, splits


_WORKER = textwrap.dedent("""
    import sys
    from dataclasses import replace
    from pathlib import Path
    import pandas as pd
    from slidemil.tracking import setup_tracking
    from slidemil.training.tuning import run_tuning
    from tests.synthetic_bags import bag_source
    from tests.test_tuning import BASE_TRAIN, CLASSES, DIMS, SECTIONS, _cfg
    root, storage = Path(sys.argv[1]), sys.argv[2]
    setup_tracking(root, "pg-tune")  # MLFLOW_TRACKING_URI: the server
    cfg = replace(_cfg(root, 2), storage=storage, study_name="pg-shared")
    slides = pd.read_csv(root / "slides.csv")
    run_tuning(slides, pd.read_csv(root / "splits.csv"), cfg, SECTIONS, BASE_TRAIN, CLASSES, bag_source(slides), DIMS)
""")


@pytest.mark.slow
def test_two_tuning_workers_share_one_postgres_study(postgres, mlflow_server, bags):
    root, _, _ = bags
    storage = new_database(postgres, "optuna")
    optuna.create_study(study_name="pg-shared", storage=storage, direction="minimize")  # once, before the workers
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(root), storage], cwd=ROOT,
                              env={**ENV, "SLIDEMIL_TUNE_WORKER": str(i), "MLFLOW_TRACKING_URI": mlflow_server[0]},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="pg-shared", storage=storage)
    trials = study.trials
    assert len(trials) == 4 and sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state.is_finished() for t in trials)
    assert sorted(t.user_attrs["worker"] for t in trials) == [0, 0, 1, 1]  # both workers, one study
    assert {t.user_attrs["sampler_seed"] for t in trials} == {0, 1}  # differently seeded samplers
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    client = mlflow.MlflowClient(mlflow_server[0])
    exp = client.get_experiment_by_name("pg-tune")
    assert len(client.search_runs([exp.experiment_id], "tags.`slidemil.kind` = 'tune-trial'")) == 4


@pytest.mark.slow
def test_training_run_is_tracked_on_the_postgres_mlflow_server(mlflow_server, bags, monkeypatch):
    from slidemil.tracking import setup_tracking
    from slidemil.training.config import TrainConfig
    from slidemil.training.cross_validation import CVSpec, run_cross_validation
    from tests.synthetic_bags import CLASSES, DIM, bag_source, bundle_context

    url, db, artifacts = mlflow_server
    root, slides, splits = bags
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    setup_tracking(root, "pg-train")
    train = TrainConfig(lr=1e-3, max_epochs=3, min_epochs=1, patience=2, seed=0, accelerator="cpu", devices=1)
    spec = CVSpec("abmil", {"in_dim": DIM, "n_classes": 2}, train, CLASSES, bundle_context())
    res = run_cross_validation(slides, splits, spec, bag_source(slides), root / "out")
    assert mlflow.get_tracking_uri() == url
    client = mlflow.MlflowClient(url)
    parent = client.get_run(res.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.artifact_uri.startswith("mlflow-artifacts:")
    folds = client.search_runs([parent.info.experiment_id], "tags.`slidemil.kind` = 'cv-fold'")
    assert len(folds) == 1 and 0.0 <= folds[0].data.metrics["val_auc"] <= 1.0
    assert len(client.get_metric_history(folds[0].info.run_id, "val_loss")) >= 1
    logged = [a.path for a in client.list_artifacts(res.parent_run_id)]
    assert logged  # uploaded over HTTP into the served artifact store ...
    assert any(artifacts.rglob(Path(logged[0]).name))  # ... which is this folder
    engine = sqlalchemy.create_engine(db)  # and the runs are rows in PostgreSQL, not in a local file
    with engine.connect() as con:
        ids = {r[0] for r in con.execute(sqlalchemy.text("SELECT run_uuid FROM runs"))}
    engine.dispose()
    assert {res.parent_run_id, folds[0].info.run_id} <= ids
    assert not (root / "mlflow.db").exists()
