"""MLflow set-up shared by training, promotion, serving and the dashboard.

Default store: an embedded sqlite file ``mlflow.db`` plus an artifact folder ``mlruns/`` in the project
(``mlflow ui --backend-store-uri sqlite:///mlflow.db``). ``MLFLOW_TRACKING_URI`` points everything at a team
server instead.

Kills are expected (``kill -9``, the OOM killer, a cancelled CI job), so:

- the sqlite store is created in a temporary file and linked into place only once its schema is complete; a
  half-made store from a killed first run (tables created, migrations unfinished: every later run failed with
  "table ... already exists") holds no runs, so it is moved aside and made again;
- runs carry the host and process that own them; :func:`guard_runs` (start of train/tune) marks RUNNING runs
  of dead processes on this host FAILED, and ends this process's runs KILLED on SIGTERM/SIGHUP.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from slidemil.utils.process import HOST_TAG, PID_START_TAG, PID_TAG, process_alive

os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per bundle download is noise


log = logging.getLogger(__name__)

STALE_TAG = "slidemil.ended_because"


def default_tracking_uri(project_root: str | Path) -> str:
    return f"sqlite:///{Path(project_root).resolve() / 'mlflow.db'}"


_SET_BY_US: set[str] = set()


def tracking_uri(project_root: str | Path, configured: str | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when the user set it, else ``configured`` (params.yaml ``train.tracking_uri``: a
    server ``http://host:5000`` or a database ``postgresql://...``), else the project's embedded sqlite store.

    ``mlflow.set_tracking_uri`` writes the variable too, so a value this module put there is not mistaken for
    the user's choice when another project root is set up later in the same process.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and env not in _SET_BY_US:
        return env
    return configured or default_tracking_uri(project_root)


def setup_tracking(project_root: str | Path, experiment: str, uri: str | None = None) -> str:
    """Point MLflow at the store (env var, then ``uri``, then sqlite) and return the experiment id, creating
    it if needed."""
    import mlflow

    uri = tracking_uri(project_root, uri)
    if uri == default_tracking_uri(project_root):
        ensure_sqlite_store(Path(project_root).resolve() / "mlflow.db")
    _SET_BY_US.add(uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is not None:
        mlflow.set_experiment(experiment_id=exp.experiment_id)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):  # keep artifacts beside the db, not in whatever the working directory is
        location = (Path(project_root).resolve() / "mlruns").as_uri()
    try:
        exp_id = mlflow.create_experiment(experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException as exc:  # workers on several machines start together: one wins
        exp = mlflow.get_experiment_by_name(experiment)
        if exc.error_code != "RESOURCE_ALREADY_EXISTS" or exp is None:
            raise
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def open_tracking(project_root: str | Path) -> str:
    """Point MLflow at an existing store, read-only: no database file, table or experiment is created.

    For commands that only read (``slidemil predict``): the project's sqlite store must exist already
    (``FileNotFoundError`` otherwise, naming it); a user's ``MLFLOW_TRACKING_URI`` is used as it is.
    """
    import mlflow

    uri = tracking_uri(project_root)
    if uri == default_tracking_uri(project_root):
        db = Path(project_root).resolve() / "mlflow.db"
        if not db.exists():
            raise FileNotFoundError(f"no MLflow store at {db}: train and promote a model first (`dvc repro`), "
                                    "pass --project with the project root, or set MLFLOW_TRACKING_URI")
    _SET_BY_US.add(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def dvc_out_hash(project_root: str | Path, stage: str) -> str | None:
    """The md5 DVC recorded for a stage's first output in ``dvc.lock`` (the data version a run used)."""
    import yaml

    lock = Path(project_root) / "dvc.lock"
    if not lock.exists():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    outs = stages.get(stage, {}).get("outs") or []
    return outs[0].get("md5") if outs else None


# ---- the sqlite store: complete or absent -------------------------------------------------------------------
def ensure_sqlite_store(db: Path) -> None:
    """Make ``db`` a complete MLflow store: create it atomically, or rebuild one a killed first run left half-made.

    A store at an older schema that holds runs is left alone (MLflow then asks for ``mlflow db upgrade``).
    """
    with _init_lock(db):
        state = _store_state(db)
        if state == "complete":
            return
        if state == "half-made":
            aside = db.with_name(f"{db.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(db, aside)
            log.warning("%s was left half-initialised (a run killed while creating the MLflow tables) and holds "
                        "no runs; moved it to %s and creating the store again", db.name, aside.name)
        if state != "absent" and db.exists():  # an older schema with runs in it: MLflow explains
            return
        _create_store(db)


def _store_state(db: Path) -> str:
    """'absent', 'complete' (schema at MLflow's head), 'half-made' (not at head, no runs, no models), 'older'."""
    if not db.exists():
        return "absent"
    from mlflow.store.db.utils import _get_latest_schema_revision  # noqa: PLC0415 - the schema MLflow expects

    with contextlib.closing(sqlite3.connect(db)) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        revision = con.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables \
            else None
        if revision is not None and revision[0] == _get_latest_schema_revision():
            return "complete"
        held = sum(con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # noqa: S608 - fixed table names
                   for t in ("runs", "registered_models") if t in tables)
    return "half-made" if held == 0 else "older"


def _create_store(db: Path) -> None:
    """Build the schema in a temporary file beside ``db`` and link it into place (never over an existing file)."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables  # noqa: PLC0415 - the tables `mlflow server` creates

    db.parent.mkdir(parents=True, exist_ok=True)
    for stale in db.parent.glob(f".{db.name}.*.tmp*"):  # a killed creator and its journal (we hold the lock)
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()
    try:
        os.link(tmp, db)  # atomic, and refuses to replace a store another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _init_lock(db: Path) -> Iterator[None]:
    """One process at a time checks/creates a given store (parallel tuning workers start together)."""
    import fcntl

    digest = hashlib.sha256(str(db.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"slidemil-mlflow-init-{digest}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---- runs of killed processes ---------------------------------------------------------------------------------
def fail_stale_runs(experiment_id: str) -> list[str]:
    """Mark FAILED the RUNNING runs of ``experiment_id`` whose owning process on this host no longer exists.

    Runs of other hosts, and runs without slidemil's process tags, are left alone (their owner may be alive).
    Returns the run ids ended.
    """
    from mlflow.tracking import MlflowClient

    client, host, ended = MlflowClient(), socket.gethostname(), []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=5000):
        tags = run.data.tags
        if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            continue
        pid = int(tags[PID_TAG])
        if pid == os.getpid() or process_alive(pid, tags.get(PID_START_TAG, "")):
            continue
        client.set_tag(run.info.run_id, STALE_TAG,
                       f"found RUNNING by process {os.getpid()}; its process {pid} on {host} no longer exists "
                       "(killed, e.g. kill -9 or out of memory)")
        client.set_terminated(run.info.run_id, "FAILED")
        ended.append(run.info.run_id)
    if ended:
        log.warning("marked %d run(s) of killed processes FAILED: %s", len(ended), ", ".join(ended))
    return ended


def end_runs_on_signal(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """On these signals, end this process's active MLflow runs as KILLED, then die of the signal as before.

    SIGKILL cannot be caught: :func:`fail_stale_runs` cleans up after it on the next run.
    """
    def handler(signum: int, frame) -> None:
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run("KILLED")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for sig in signals:
        signal.signal(sig, handler)


def guard_runs(experiment_id: str) -> None:
    """Start of a train/tune run: end runs that killed processes left RUNNING, and end ours KILLED if killed."""
    fail_stale_runs(experiment_id)
    end_runs_on_signal()
