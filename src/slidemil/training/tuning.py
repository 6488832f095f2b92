"""Hyper-parameter search with Optuna over the MIL models, on validation data only.

Each trial picks a registered method and samples that method's own search space (plus the shared trainer
ranges), trains on the training part of one or more folds and is scored by the *validation* metric of the
checkpoint the method selects; the test parts are never touched. Unpromising trials are pruned by the
Lightning pruning callback (watching the method's monitored metric per epoch). The study lives in any SQLAlchemy database URL
(an embedded sqlite file by default), so several processes or machines can work on one study. Each trial is
a nested MLflow run under one parent run per tuning invocation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import yaml

from slidemil.evaluation.metrics import slide_metrics
from slidemil.methods import get_method
from slidemil.training.config import TrainConfig
from slidemil.training.data import SlideRef, SlideSource
from slidemil.training.fold import train_fold
from slidemil.training.parallel import FoldPool, resolve_parallel_folds
from slidemil.utils.process import process_tags

log = logging.getLogger(__name__)

#: trainer settings every method shares, searched log-uniformly
TRAINER_SPACE: dict[str, tuple[float, float]] = {"lr": (1e-5, 2e-3), "weight_decay": (1e-6, 1e-3)}


@dataclass
class SearchSpace:
    """What a study searches: the candidate methods, the trainer ranges, and optional [low, high] (or
    choices) that narrow a config field of any method that declares it in its own search space."""

    methods: list[str] = field(default_factory=lambda: ["clam_sb", "clam_mb", "abmil"])
    trainer: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(TRAINER_SPACE))
    fields: dict[str, list] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.methods:
            get_method(name)  # unknown method names fail here, before any trial runs
        unknown = sorted(set(self.trainer) - set(TRAINER_SPACE))
        if unknown:
            raise ValueError(f"tune.space.trainer: unknown key(s) {unknown}; allowed: {sorted(TRAINER_SPACE)}")
        searchable = {f for m in self.methods for f in get_method(m).search_space}
        stray = sorted(set(self.fields) - searchable)
        if stray:
            raise ValueError(f"tune.space.fields {stray} are searched by none of {self.methods} "
                             f"(their searchable fields: {sorted(searchable)})")


@dataclass
class TuneConfig:
    study_name: str = "slidemil-mil"
    storage: str = "sqlite:///data/tune/optuna.db"
    n_trials: int = 10
    timeout_s: float | None = None
    metric: str = "val_loss"  # val_loss (minimise) or val_auc / val_balanced_accuracy (maximise)
    #: folds whose validation parts score a trial (the mean over them); None = every fold of the splits
    folds: list[int] | None = None
    seed: int = 0
    #: this process's index among the processes sharing the study (env SLIDEMIL_TUNE_WORKER); the sampler is
    #: seeded with seed + worker, so one worker reproduces its trials and several never draw the same ones
    worker: int = field(default_factory=lambda: int(os.environ.get("SLIDEMIL_TUNE_WORKER", "0")))
    pruner_warmup_epochs: int = 5
    space: SearchSpace = field(default_factory=SearchSpace)

    @property
    def direction(self) -> str:
        return "minimize" if self.metric.endswith("loss") else "maximize"


def suggest(trial: optuna.Trial, space: SearchSpace) -> tuple[str, dict, dict]:
    """Sample (method name, method-config overrides, trainer overrides) for one trial, from the chosen
    method's own search space."""
    method = trial.suggest_categorical("method", space.methods)
    overrides = {name: param.suggest(trial, name, space.fields.get(name))
                 for name, param in get_method(method).search_space.items()}
    trainer = {k: trial.suggest_float(k, *space.trainer[k], log=True) for k in space.trainer}
    return method, overrides, trainer


def create_study(cfg: TuneConfig, n_folds: int = 1) -> optuna.Study:
    """Create or join the shared study (safe to call from several processes at once).

    The sampler is seeded with seed + worker + the trials already in the study, so one worker reproduces its
    trials from the same database state and a study that persists across runs draws new trials each run.
    Pruning steps are epochs when one fold scores a trial, folds (the running mean) when several do.
    """
    _ensure_sqlite_folder(cfg.storage)
    warmup = cfg.pruner_warmup_epochs if n_folds == 1 else 1
    study = optuna.create_study(
        study_name=cfg.study_name,
        storage=cfg.storage,
        direction=cfg.direction,
        load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup),
    )
    study.sampler = optuna.samplers.TPESampler(seed=cfg.seed + cfg.worker + 1000 * len(study.trials))
    return study


def run_tuning(
    slides: pd.DataFrame,
    splits: pd.DataFrame,
    cfg: TuneConfig,
    method_sections: dict[str, dict],
    base_train: TrainConfig,
    class_names: list[str],
    source: SlideSource,
    feature_dims: dict[str, int],
    *,
    parallel_folds: int | str = 1,
) -> optuna.Study:
    """Run ``cfg.n_trials`` trials in this process (others may add trials to the same study concurrently).

    ``method_sections`` holds each candidate method's params.yaml section (its base config).
    ``parallel_folds`` (``auto`` or N, as ``train.parallel_folds``): a trial scored on several folds trains
    them in forked processes (:mod:`slidemil.training.parallel`, the same values as one after another); the
    running mean is still reported fold by fold in order, so pruning decides exactly as it does sequentially.
    """
    index = {c: i for i, c in enumerate(class_names)}
    refs = {r.slide_id: SlideRef(r.slide_id, index[r.label]) for r in slides.itertuples()}
    folds = sorted(int(f) for f in splits["fold"].unique()) if cfg.folds is None else list(cfg.folds)
    study = create_study(cfg, len(folds))

    def objective(trial: optuna.Trial) -> float:
        name, overrides, train_over = suggest(trial, cfg.space)
        trial.set_user_attr("worker", cfg.worker)  # who ran it, in a study several workers share
        trial.set_user_attr("sampler_seed", cfg.seed + cfg.worker)
        method_cls = get_method(name)
        config = method_cls.resolve_config({**method_sections.get(name, {}), **overrides},
                                           n_classes=len(class_names), feature_dims=feature_dims)
        method = method_cls(config)
        train_cfg = TrainConfig.from_dict({**base_train.to_dict(), **train_over})
        parts = {fold: {s: [refs[i] for i in splits.loc[(splits.fold == fold) & (splits.split == s), "slide_id"]]
                        for s in ("train", "val")} for fold in folds}
        n_parallel = resolve_parallel_folds(parallel_folds, train_cfg, len(folds)) if len(folds) > 1 else 1
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            mlflow.set_tags({**process_tags(), "slidemil.kind": "tune-trial", "optuna.study": cfg.study_name,
                             "optuna.trial": str(trial.number)})
            mlflow.log_params({"method": name, **overrides, **train_over})
            pool = (FoldPool(n_parallel, method, parts, source, train_cfg, class_names) if n_parallel > 1
                    else contextlib.nullcontext())
            with pool:
                value = _score_folds(trial, cfg.metric, method, parts, pool, source, train_cfg, class_names)
            mlflow.log_metric(cfg.metric, value)
            mlflow.set_tag("optuna.state", "complete")
        return value

    with mlflow.start_run(run_name=f"tune-{cfg.study_name}") as parent:
        mlflow.set_tags({**process_tags(), "slidemil.kind": "tune", "optuna.study": cfg.study_name})
        mlflow.log_params({"n_trials": cfg.n_trials, "metric": cfg.metric, "folds": str(folds),
                           "storage": _redact(cfg.storage)})
        study.optimize(objective, n_trials=cfg.n_trials, timeout=cfg.timeout_s, catch=(RuntimeError,),
                       callbacks=[_log_pruned])
        _log_study(study, parent.info.run_id)
    return study


def _score_folds(trial: optuna.Trial, metric: str, method, parts: dict[int, dict], pool, source: SlideSource,
                 train_cfg: TrainConfig, class_names: list[str]) -> float:
    """The trial's value: the mean validation ``metric`` over the folds, reported fold by fold in order (the
    running mean) so a pruned trial stops after the same fold whether the folds train here or in ``pool``."""
    from optuna_integration import PyTorchLightningPruningCallback

    scores = []
    for k, fold in enumerate(parts):
        if isinstance(pool, FoldPool):
            res = pool.result(fold)
            for row in res.history:  # the per-epoch metrics the in-process sink would have logged live
                mlflow.log_metrics({m: v for m, v in row.items() if m != "epoch"}, step=int(row["epoch"]))
        else:
            callbacks = [PyTorchLightningPruningCallback(trial, monitor=method.monitor)] if len(parts) == 1 else []
            res = train_fold(fold, method, parts[fold], source, train_cfg, class_names,
                             metric_sink=lambda m, step: mlflow.log_metrics(m, step=step), extra_callbacks=callbacks)
        val = res.predictions[res.predictions.split == "val"]
        metrics = slide_metrics(val["label"].to_numpy(), val[[f"prob_{c}" for c in class_names]].to_numpy())
        metrics["loss"] = res.best_val_loss
        scores.append(metrics[metric.removeprefix("val_")])
        mlflow.log_metric(f"fold_{metric}", scores[-1], step=k)
        if len(parts) > 1:  # prune on the running mean over the folds scored so far
            trial.report(float(np.nanmean(scores)), step=k)
            if trial.should_prune():
                mlflow.set_tag("optuna.state", "pruned")
                raise optuna.TrialPruned(f"mean {metric} after {k + 1} folds")
    return float(np.nanmean(scores))


def _log_pruned(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    if trial.state == optuna.trial.TrialState.PRUNED:
        log.info("trial %d pruned at step %s (an epoch when one fold scores a trial, a fold when several do)",
                 trial.number, max(trial.intermediate_values, default=None))


def _log_study(study: optuna.Study, run_id: str) -> None:
    """Best value, trial counts and the optimisation history / importance plots on the parent run."""
    states = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
    mlflow.log_metrics({f"trials_{k.lower()}": v for k, v in states.items()})
    try:
        best = study.best_trial
    except ValueError:
        return
    mlflow.log_metric("best_value", best.value)
    mlflow.log_params({f"best.{k}": v for k, v in best.params.items()})
    import optuna.visualization.matplotlib as ovm

    from slidemil.evaluation.plots import save_figure

    with warnings.catch_warnings():  # Optuna flags its matplotlib plots experimental on every call: noise
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        save_figure(ovm.plot_optimization_history(study).figure, "optimization_history.png")
        completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(completed) >= 2 and len({tuple(sorted(t.params)) for t in completed}) >= 1:
            try:
                save_figure(ovm.plot_param_importances(study).figure, "param_importances.png")
            except (ValueError, RuntimeError) as exc:  # too few distinct trials for importances
                log.warning("parameter importance not computed: %s", exc)


def export_best(study: optuna.Study, path: str | Path) -> dict:
    """Write the best trial as a YAML file the train stage reads for its ``tuned`` family: the method, the
    config fields the trial changed and the trainer settings."""
    from slidemil.utils.atomic import write_text_atomic

    best = study.best_trial
    p = dict(best.params)
    method = p.pop("method")
    trainer = {k: p.pop(k) for k in TRAINER_SPACE if k in p}
    searchable = get_method(method).search_space
    out = {
        "method": method,
        "method_config": {k: v for k, v in p.items() if k in searchable},
        "trainer": trainer,
        "study": study.study_name,
        "trial": best.number,
        "value": float(best.value),
        "n_trials": len(study.trials),
    }
    write_text_atomic(path, yaml.safe_dump(out, sort_keys=False))
    return out


def objective_digest(cfg: TuneConfig, method_sections: dict[str, dict], base_train: TrainConfig,
                     splits: pd.DataFrame) -> str:
    """8 hex digits naming what a trial's value means (metric, folds, splits, search space, base settings).

    A study that persists across runs is joined only while this is unchanged: trials scored under other
    settings are not comparable, so they belong to another study (``<study_name>-<digest>``)."""
    import hashlib
    import json

    what = {"metric": cfg.metric, "folds": cfg.folds, "space": [cfg.space.methods, cfg.space.trainer, cfg.space.fields],
            "sections": method_sections, "train": base_train.to_dict(),
            "splits": splits.sort_values(["fold", "slide_id"])[["fold", "slide_id", "split"]].values.tolist()}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _ensure_sqlite_folder(storage: str) -> None:
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def _redact(url: str) -> str:
    """Hide a password in a database URL before logging it."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
