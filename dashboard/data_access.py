"""Read-only loaders for the dashboard: params.yaml, the DVC outputs and the MLflow store.

Why one module: every page asks the same questions ("where is the project?", "which store?", "does this output
exist yet?"), and every read is cached with a short TTL so reruns stay fast while a `dvc repro` running in another
terminal still shows up within a minute. File caches are keyed by modification time as well, so a rewritten
output is picked up at once. Nothing here writes into the project: MLflow artifacts are copied to a temp folder.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd
import streamlit as st
import yaml

from slidemil.tracking import tracking_uri

if TYPE_CHECKING:  # the record brings torch in (score layers); only the Slides page needs it
    from dashboard.heatmap_view import SlideRecord

CODE_ROOT = Path(__file__).resolve().parents[1]
#: What a project's params.yaml leaves out (or all of it, when there is none) comes from the shipped one.
DEFAULT_PARAMS_FILE = CODE_ROOT / "params.yaml"
TTL = 60  # seconds a cached read may be stale
METRICS = ("auc", "accuracy", "balanced_accuracy", "macro_f1")

# A dead tracking server should fail a page quickly, not hang it in retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


# ---- project --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Project:
    """The project the dashboard looks at: its root, its params (defaults filled in) and its MLflow store."""

    root: Path
    params: dict
    params_found: bool

    def path(self, dotted: str) -> Path:
        """A path from params.yaml (``"tile.qc_dir"``), resolved against the project root."""
        value = self.get(dotted)
        if value is None:
            raise KeyError(f"params.yaml has no {dotted}")
        p = Path(str(value))
        return p if p.is_absolute() else self.root / p

    def get(self, dotted: str, default=None):
        node = self.params
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def tracking_uri(self) -> str:
        """``$MLFLOW_TRACKING_URI``, else the project's embedded store (as training and serving resolve it)."""
        return tracking_uri(self.root)

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.get("data.classes") or []]

    @property
    def experiment(self) -> str:
        return str(self.get("train.experiment"))

    @property
    def models(self) -> list[str]:
        return [str(m) for m in self.get("train.models") or []]

    @property
    def heatmap_model(self) -> str:
        return str(self.get("heatmaps.model"))

    @property
    def registered_model_name(self) -> str:
        """``$SLIDEMIL_MODEL_NAME``, else params ``promote.model_name`` (what the promote stage registers)."""
        return os.environ.get("SLIDEMIL_MODEL_NAME") or str(self.get("promote.model_name"))


def project_root() -> Path:
    """``$SLIDEMIL_PROJECT_ROOT``, else the folder holding ``dashboard/``."""
    env = os.environ.get("SLIDEMIL_PROJECT_ROOT")
    return Path(env).expanduser().resolve() if env else CODE_ROOT


def get_project() -> Project:
    root = project_root()
    params_path = Path(os.environ.get("SLIDEMIL_PARAMS") or root / "params.yaml")
    found = params_path.is_file()
    defaults = _read_yaml(str(DEFAULT_PARAMS_FILE), _mtime(DEFAULT_PARAMS_FILE))
    params = _merge(defaults, _read_yaml(str(params_path), _mtime(params_path)) if found else {})
    return Project(root=root, params=params, params_found=found)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---- files ----------------------------------------------------------------------------------------------
def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


@st.cache_data(ttl=TTL, show_spinner=False)
def _read_yaml(path: str, mtime: float | None) -> dict:
    return yaml.safe_load(Path(path).read_text()) or {}


@st.cache_data(ttl=TTL, show_spinner=False)
def _read_json(path: str, mtime: float) -> dict | list:
    return json.loads(Path(path).read_text())


@st.cache_data(ttl=TTL, show_spinner=False)
def _read_csv(path: str, mtime: float) -> pd.DataFrame:
    return pd.read_csv(path)


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=64)
def _read_rgb(path: str, mtime: float) -> np.ndarray | None:
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_json(path: Path) -> dict | list | None:
    """Parsed JSON, or None when the file does not exist (yet)."""
    m = _mtime(path)
    return None if m is None else _read_json(str(path), m)


def read_csv(path: Path) -> pd.DataFrame | None:
    m = _mtime(path)
    return None if m is None else _read_csv(str(path), m)


def read_rgb(path: Path) -> np.ndarray | None:
    """RGB uint8 image, or None when missing or unreadable."""
    m = _mtime(path)
    return None if m is None else _read_rgb(str(path), m)


def mtimes(*paths: Path) -> tuple[float | None, ...]:
    """Modification times (None = missing): a cache key that changes as soon as any of the files is rewritten."""
    return tuple(_mtime(p) for p in paths)


def modified(path: Path) -> str | None:
    """When a file was last written, for "as of" captions."""
    m = _mtime(path)
    return None if m is None else pd.Timestamp(m, unit="s").strftime("%Y-%m-%d %H:%M")


# ---- DVC outputs ----------------------------------------------------------------------------------------
def train_summary(project: Project, model: str) -> dict | None:
    return read_json(project.path("train.out_dir") / model / "summary.json")


def train_predictions(project: Project, model: str) -> pd.DataFrame | None:
    return read_csv(project.path("train.out_dir") / model / "predictions.csv")


def trained_models(project: Project) -> list[str]:
    """Models with a predictions.csv under ``train.out_dir`` (params order first, then any others)."""
    base = project.path("train.out_dir")
    found = sorted(p.parent.name for p in base.glob("*/predictions.csv")) if base.is_dir() else []
    return [m for m in project.models if m in found] + [m for m in found if m not in project.models]


def heatmap_index(project: Project) -> pd.DataFrame | None:
    df = read_csv(project.path("heatmaps.out_dir") / "index.csv")
    if df is None or df.empty:
        return None
    return df.assign(slide_id=df["slide_id"].astype(str))


def heatmap_dir(project: Project, slide_id: str) -> Path:
    return project.path("heatmaps.out_dir") / slide_id


def slide_record(project: Project, slide_id: str) -> SlideRecord | None:
    """The stage's ``record.json`` of one slide, parsed; None when the folder has none (an older run).

    Raises ValueError when the file is there but not a complete record.
    """
    path = heatmap_dir(project, slide_id) / "record.json"
    m = _mtime(path)
    return None if m is None else _slide_record(str(path), m)


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=32)
def _slide_record(path: str, mtime: float) -> SlideRecord:
    from dashboard.heatmap_view import SlideRecord

    return SlideRecord.from_dict(json.loads(Path(path).read_text()))


def slide_choice_labels(index: pd.DataFrame) -> dict[str, str]:
    """Picker text per slide from the heatmaps index: ``s0 — true normal, predicted subtype_a (0.91)``."""
    labels = {}
    for row in index.to_dict(orient="records"):
        prob = row.get(f"prob_{row['pred']}")
        conf = "" if prob is None or pd.isna(prob) else f" ({float(prob):.2f})"
        labels[row["slide_id"]] = f"{row['slide_id']} — true {row['label']}, predicted {row['pred']}{conf}"
    return labels


def qc_images(project: Project) -> dict[str, Path]:
    folder = project.path("tile.qc_dir")
    return {p.stem: p for p in sorted(folder.glob("*.png"))} if folder.is_dir() else {}


def stain_qc_images(project: Project) -> dict[str, Path]:
    """The `stains` stage's QC panels (RGB | H | E), ``<stains.out_dir>/qc/<slide>.png``."""
    if project.get("stains.out_dir") is None:
        return {}
    folder = project.path("stains.out_dir") / "qc"
    return {p.stem: p for p in sorted(folder.glob("*.png"))} if folder.is_dir() else {}


# ---- MLflow ---------------------------------------------------------------------------------------------
@dataclass
class RunInfo:
    """A flattened MLflow run (picklable, so it can live in ``st.cache_data``)."""

    run_id: str
    name: str
    model: str
    status: str
    start_time: pd.Timestamp | None
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.model} · {self.run_id[:8]}"


@dataclass
class VersionInfo:
    """A registered model version plus the metrics of the run that produced it."""

    version: str
    aliases: list[str]
    run_id: str | None
    created: pd.Timestamp | None
    description: str
    tags: dict
    run_name: str | None = None
    run_metrics: dict = field(default_factory=dict)

    @property
    def selection_metric(self) -> str | None:
        return self.tags.get("slidemil.selection_metric")

    @property
    def selection_value(self) -> float | None:
        v = self.tags.get("slidemil.selection_value")
        try:
            return None if v is None else float(v)
        except ValueError:
            return None

    @property
    def promotion(self) -> str | None:
        return self.tags.get("slidemil.promotion")


def store_problem(uri: str) -> str | None:
    """Why the store cannot be read yet, or None. A missing sqlite file is never created by looking at it."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file():
            return (f"No MLflow store at `{path}` yet. Run `dvc repro` (stage `train`) first, "
                    "or set `MLFLOW_TRACKING_URI` to your tracking server.")
    return None


@st.cache_resource(show_spinner=False)
def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _ts(ms: int | None) -> pd.Timestamp | None:
    return None if ms is None else pd.Timestamp(ms, unit="ms")


def _run_info(run) -> RunInfo:
    tags = dict(run.data.tags)
    return RunInfo(run_id=run.info.run_id, name=run.info.run_name or tags.get("mlflow.runName", ""),
                   model=tags.get("slidemil.model", run.info.run_name or "?"), status=run.info.status,
                   start_time=_ts(run.info.start_time), params=dict(run.data.params),
                   metrics=dict(run.data.metrics), tags=tags)


@st.cache_data(ttl=TTL, show_spinner=False)
def experiments(uri: str) -> list[tuple[str, str]]:
    """(experiment_id, name) of every active experiment, the empty "Default" one last."""
    exps = _client(uri).search_experiments()
    return sorted(((e.experiment_id, e.name) for e in exps), key=lambda e: (e[1] == "Default", e[1]))


@st.cache_data(ttl=TTL, show_spinner=False)
def parent_runs(uri: str, experiment_id: str) -> list[RunInfo]:
    """Cross-validation parent runs (one per model family and training), newest first."""
    runs = _client(uri).search_runs([experiment_id], filter_string="tags.`slidemil.kind` = 'cv-parent'",
                                    order_by=["attributes.start_time DESC"], max_results=500)
    return [_run_info(r) for r in runs]


@st.cache_data(ttl=TTL, show_spinner=False)
def fold_runs(uri: str, experiment_id: str, parent_run_id: str) -> list[RunInfo]:
    """The nested fold runs of one parent, by fold number."""
    runs = _client(uri).search_runs([experiment_id],
                                    filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                    max_results=1000)
    infos = [_run_info(r) for r in runs]
    return sorted(infos, key=lambda r: int(r.tags.get("slidemil.fold", "0") or 0))


@st.cache_data(ttl=TTL, show_spinner=False)
def metric_history(uri: str, run_id: str, key: str) -> pd.DataFrame:
    hist = _client(uri).get_metric_history(run_id, key)
    return pd.DataFrame({"step": [m.step for m in hist], "value": [m.value for m in hist]})


@st.cache_data(ttl=TTL, show_spinner=False)
def artifact_file(uri: str, run_id: str, artifact_path: str) -> str | None:
    """Local copy (in a temp folder, never the project) of one run artifact; None when it does not exist."""
    import mlflow.artifacts

    dst = Path(tempfile.gettempdir()) / "slidemil-dashboard" / run_id
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                   dst_path=str(dst), tracking_uri=uri)
    except Exception:  # noqa: BLE001 - a missing artifact just means "nothing to show"
        return None


def run_predictions(uri: str, run_id: str) -> pd.DataFrame | None:
    local = artifact_file(uri, run_id, "report/predictions.csv")
    return None if local is None else read_csv(Path(local))


def run_roc(project: Project, run: RunInfo) -> tuple[pd.DataFrame | None, str]:
    """Pooled test ROC (class, fpr, tpr) of a parent run and where it came from.

    ``data/eval/roc/<model>.csv`` is used when ``data/train/<model>/summary.json`` names this run as its
    producer (the DVC output then belongs to this run); otherwise the run's own ``report/predictions.csv``.
    """
    summary = train_summary(project, run.model)
    roc_file = project.path("evaluate.roc_dir") / f"{run.model}.csv"
    if summary and summary.get("parent_run_id") == run.run_id:
        roc = read_csv(roc_file)
        if roc is not None and not roc.empty:
            return roc, str(roc_file.relative_to(project.root) if roc_file.is_relative_to(project.root) else roc_file)
    preds = run_predictions(project.tracking_uri, run.run_id)
    if preds is None:
        return None, "no ROC data"
    return roc_from_predictions(preds), "run artifact report/predictions.csv"


def roc_from_predictions(preds: pd.DataFrame) -> pd.DataFrame:
    """One-vs-rest ROC over all test rows (folds pooled), like the evaluate stage."""
    from slidemil.evaluation.metrics import roc_points

    classes = [c[len("prob_"):] for c in preds.columns if c.startswith("prob_")]
    test = preds[preds["split"] == "test"] if "split" in preds else preds
    if test.empty or not classes:
        return pd.DataFrame(columns=["class", "fpr", "tpr"])
    return roc_points(test["label"].to_numpy(), test[[f"prob_{c}" for c in classes]].to_numpy(), classes)


def auc_of(curve: pd.DataFrame) -> float:
    """Area under one ROC curve given as fpr/tpr rows (trapezoids in fpr order)."""
    c = curve.sort_values(["fpr", "tpr"])
    if len(c) < 2:
        return math.nan
    return float(np.trapezoid(c["tpr"].to_numpy(float), c["fpr"].to_numpy(float)))


# ---- registry -------------------------------------------------------------------------------------------
@st.cache_data(ttl=TTL, show_spinner=False)
def registry_aliases(uri: str, model_name: str, aliases: tuple[str, ...]) -> dict[str, VersionInfo | None]:
    """The version holding each alias (None where none does, or when the model is not registered).

    Same lookup as ``slidemil.registry.champion_version`` but through a client bound to ``uri``:
    ``mlflow.set_tracking_uri`` would also rewrite ``$MLFLOW_TRACKING_URI`` for the whole process.
    """
    from mlflow.exceptions import MlflowException

    out: dict[str, VersionInfo | None] = {}
    for alias in aliases:
        try:
            mv = _client(uri).get_model_version_by_alias(model_name, alias)
        except MlflowException:
            mv = None
        out[alias] = None if mv is None else _version_info(uri, mv)
    return out


@st.cache_data(ttl=TTL, show_spinner=False)
def registry_versions(uri: str, model_name: str) -> list[VersionInfo]:
    """Every version of ``model_name``, newest first (empty when it is not registered)."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        mvs = client.search_model_versions(f"name = '{model_name}'")
        aliases = dict(client.get_registered_model(model_name).aliases or {})  # search results omit aliases
    except MlflowException:
        return []
    infos = [_version_info(uri, mv, with_run=False) for mv in mvs]
    for info in infos:
        info.aliases = sorted(a for a, v in aliases.items() if str(v) == info.version)
    return sorted(infos, key=lambda v: int(v.version), reverse=True)


def _version_info(uri: str, mv, with_run: bool = True) -> VersionInfo:
    from mlflow.exceptions import MlflowException

    info = VersionInfo(version=str(mv.version), aliases=list(getattr(mv, "aliases", []) or []), run_id=mv.run_id,
                       created=_ts(mv.creation_timestamp), description=mv.description or "", tags=dict(mv.tags))
    if with_run and mv.run_id:
        try:
            run = _client(uri).get_run(mv.run_id)
            info.run_name = run.info.run_name
            info.run_metrics = dict(run.data.metrics)
        except MlflowException:
            pass
    return info
