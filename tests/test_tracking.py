"""The MLflow store survives kills: a killed first run leaves no broken store, killed runs do not stay RUNNING."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from slidemil.tracking import STALE_TAG, ensure_sqlite_store, fail_stale_runs, setup_tracking

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
ENV.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def _own_store(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    with contextlib.suppress(Exception):
        mlflow.end_run()


def _spawn(script: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if needle in line:
            return line.strip()
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no {needle!r} from the child: {proc.stderr.read()}")


def test_killed_first_run_leaves_no_store_and_the_rerun_works(tmp_path):
    """SIGKILL while the tables are being created: nothing at mlflow.db; the rerun builds a complete store."""
    proc = _spawn(f"from slidemil.tracking import setup_tracking; setup_tracking({str(tmp_path)!r}, 'exp')")
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".mlflow.db.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "mlflow.db").exists() and list(tmp_path.glob(".mlflow.db.*.tmp"))
    exp = setup_tracking(tmp_path, "exp")
    with mlflow.start_run(experiment_id=exp):
        mlflow.log_metric("m", 1.0)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".mlflow")) == []


def _half_made_store(db: Path) -> None:
    """What a kill mid-migration leaves: some later tables exist while alembic records an earlier revision."""
    ensure_sqlite_store(db)
    with contextlib.closing(sqlite3.connect(db)) as con:
        con.execute("DROP TABLE experiment_tags")
        con.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")  # an early revision
        con.commit()


def test_half_made_store_is_rebuilt_instead_of_failing_every_run(tmp_path, caplog):
    db = tmp_path / "mlflow.db"
    _half_made_store(db)
    shutil.copy(db, tmp_path / "copy.db")
    with pytest.raises(Exception, match="already exists"):  # plain MLflow on such a store, on every run
        MlflowClient(f"sqlite:///{tmp_path / 'copy.db'}").search_experiments()
    (tmp_path / "copy.db").unlink()
    exp = setup_tracking(tmp_path, "exp")
    with mlflow.start_run(experiment_id=exp):
        mlflow.log_param("p", 1)
    assert "left half-initialised" in caplog.text
    assert len(list(tmp_path.glob("mlflow.db.incomplete-*"))) == 1  # kept for inspection, not deleted


def test_store_with_runs_is_never_moved(tmp_path):
    exp = setup_tracking(tmp_path, "exp")
    with mlflow.start_run(experiment_id=exp):
        pass
    before = (tmp_path / "mlflow.db").stat().st_ino
    setup_tracking(tmp_path, "exp")
    assert (tmp_path / "mlflow.db").stat().st_ino == before and not list(tmp_path.glob("mlflow.db.incomplete-*"))


_RUNNING_CHILD = """
import sys, time
from slidemil.tracking import {setup}
from slidemil.training.run_log import MlflowRunLog
exp = setup_tracking({root!r}, "exp")
{guard}
log = MlflowRunLog()
with log.run("parent"):
    with log.run("fold-0", nested=True):
        print("running", flush=True)
        time.sleep(300)
"""


def test_runs_of_a_sigkilled_stage_are_marked_failed_by_the_next_run(tmp_path):
    exp = setup_tracking(tmp_path, "exp")
    alive = _spawn(_RUNNING_CHILD.format(setup="setup_tracking", root=str(tmp_path), guard=""))
    killed = _spawn(_RUNNING_CHILD.format(setup="setup_tracking", root=str(tmp_path), guard=""))
    try:
        _wait_for_line(alive, "running")
        _wait_for_line(killed, "running")
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
        ended = fail_stale_runs(exp)
        runs = {r.info.run_id: r for r in MlflowClient().search_runs([exp])}
        assert len(runs) == 4 and len(ended) == 2
        for run_id, run in runs.items():
            if run_id in ended:
                assert run.info.status == "FAILED" and run.data.tags["slidemil.pid"] == str(killed.pid)
                assert "no longer exists" in run.data.tags[STALE_TAG]
            else:  # the live process's runs are left alone
                assert run.info.status == "RUNNING" and run.data.tags["slidemil.pid"] == str(alive.pid)
    finally:
        alive.kill()
        alive.wait(30)


def test_sigterm_ends_the_runs_killed(tmp_path):
    exp = setup_tracking(tmp_path, "exp")
    child = _spawn(_RUNNING_CHILD.format(setup="guard_runs, setup_tracking", root=str(tmp_path),
                                         guard="guard_runs(exp)"))
    _wait_for_line(child, "running")
    child.send_signal(signal.SIGTERM)
    child.wait(60)
    assert child.returncode == -signal.SIGTERM, child.stderr.read()
    statuses = sorted(r.info.status for r in MlflowClient().search_runs([exp]))
    assert statuses == ["KILLED", "KILLED"]


def test_configured_tracking_uri_is_used_unless_the_environment_says_otherwise(tmp_path, monkeypatch):
    """params.yaml ``train.tracking_uri`` (a server or a database) replaces the project's sqlite store;
    ``MLFLOW_TRACKING_URI`` still wins."""
    team = f"sqlite:///{tmp_path / 'team.db'}"
    setup_tracking(tmp_path, "exp", team)
    assert mlflow.get_tracking_uri() == team and not (tmp_path / "mlflow.db").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    setup_tracking(tmp_path, "exp", team)
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path / 'env.db'}"
