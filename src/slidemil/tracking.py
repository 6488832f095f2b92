"""MLflow set-up shared by training, promotion, serving and the dashboard.

Default store: an embedded sqlite file ``mlflow.db`` plus an artifact folder ``mlruns/`` in the project
(``mlflow ui --backend-store-uri sqlite:///mlflow.db``). ``MLFLOW_TRACKING_URI`` points everything at a team
server instead.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def default_tracking_uri(project_root: str | Path) -> str:
    return f"sqlite:///{Path(project_root).resolve() / 'mlflow.db'}"


_SET_BY_US: set[str] = set()


def tracking_uri(project_root: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when the user set it, else the project's embedded sqlite store.

    ``mlflow.set_tracking_uri`` writes the variable too, so a value this module put there is not mistaken for
    the user's choice when another project root is set up later in the same process.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and env not in _SET_BY_US:
        return env
    return default_tracking_uri(project_root)


def setup_tracking(project_root: str | Path, experiment: str) -> str:
    """Point MLflow at the store (env var wins) and return the experiment id, creating it if needed."""
    import mlflow

    uri = tracking_uri(project_root)
    _SET_BY_US.add(uri)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is not None:
        mlflow.set_experiment(experiment_id=exp.experiment_id)
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):  # keep artifacts beside the db, not in whatever the working directory is
        location = (Path(project_root).resolve() / "mlruns").as_uri()
    exp_id = mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def dvc_out_hash(project_root: str | Path, stage: str) -> str | None:
    """The md5 DVC recorded for a stage's first output in ``dvc.lock`` (the data version a run used)."""
    import yaml

    lock = Path(project_root) / "dvc.lock"
    if not lock.exists():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    outs = stages.get(stage, {}).get("outs") or []
    return outs[0].get("md5") if outs else None
