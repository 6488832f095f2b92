"""Where training writes its MLflow runs: the real client on rank 0, a silent stand-in on other DDP ranks.

Under DDP every process runs the training script; with this, runs, params, metrics and artifacts are
written once (by global rank 0) while the other ranks still take part in every fit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any


def global_rank() -> int:
    """This process's rank in a distributed run (0 when not distributed), from the launcher's variables."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


class MlflowRunLog:
    """Thin wrapper over the MLflow fluent API used by cross-validation and tuning."""

    @contextlib.contextmanager
    def run(self, name: str, *, nested: bool = False, tags: Mapping[str, str] | None = None) -> Iterator[str]:
        import mlflow

        from slidemil.utils.process import process_tags

        with mlflow.start_run(run_name=name, nested=nested) as run:
            mlflow.set_tags({**process_tags(), **dict(tags or {})})  # process tags: see tracking.fail_stale_runs
            yield run.info.run_id

    def params(self, values: Mapping[str, Any]) -> None:
        import mlflow

        mlflow.log_params(dict(values))

    def metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics(dict(values), step=step)

    def tags(self, values: Mapping[str, str]) -> None:
        import mlflow

        mlflow.set_tags(dict(values))

    def artifact(self, path: str, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifact(path, artifact_path)

    def artifacts(self, folder: str, artifact_path: str | None = None) -> None:
        import mlflow

        mlflow.log_artifacts(folder, artifact_path)

    def bundle(self, bundle_dir: str) -> None:
        from slidemil.mlflow_model import log_bundle

        log_bundle(bundle_dir, name="model")

    def dataset(self, table, name: str, digest: str, source: str | None = None) -> None:
        """Log ``table`` (a DataFrame) as the run's training dataset; ``digest`` is the data version (a DVC
        hash), so runs on the same data show the same Dataset in MLflow's runs table."""
        import mlflow

        ds = mlflow.data.from_pandas(table, source=source, name=name, digest=digest[:36])  # MLflow keeps 36 chars
        mlflow.log_input(ds, context="training")


class SilentRunLog(MlflowRunLog):
    """Same calls, nothing written (DDP ranks other than 0)."""

    @contextlib.contextmanager
    def run(self, name: str, *, nested: bool = False, tags: Mapping[str, str] | None = None) -> Iterator[str]:
        yield ""

    def params(self, values: Mapping[str, Any]) -> None:
        pass

    def metrics(self, values: Mapping[str, float], step: int | None = None) -> None:
        pass

    def tags(self, values: Mapping[str, str]) -> None:
        pass

    def artifact(self, path: str, artifact_path: str | None = None) -> None:
        pass

    def artifacts(self, folder: str, artifact_path: str | None = None) -> None:
        pass

    def bundle(self, bundle_dir: str) -> None:
        pass

    def dataset(self, table, name: str, digest: str, source: str | None = None) -> None:
        pass


def run_log() -> MlflowRunLog:
    return MlflowRunLog() if global_rank() == 0 else SilentRunLog()
