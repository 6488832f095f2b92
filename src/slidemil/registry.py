"""MLflow Model Registry: register evaluated bundles, promote champion/challenger, load by alias.

Promotion compares *validation* metrics only (the test folds never choose a model). A new version becomes
``champion`` when it beats the current champion (or there is none); otherwise it becomes ``challenger``.
The comparison is recorded on the new version (tags) and on the training run (a JSON artifact + tags).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from slidemil.bundle import ModelBundle

CHAMPION = "champion"
CHALLENGER = "challenger"
METRIC_TAG = "slidemil.selection_metric"
VALUE_TAG = "slidemil.selection_value"


@dataclass
class PromotionResult:
    model_name: str
    version: str
    alias: str
    metric: str
    value: float
    previous_champion_version: str | None
    previous_champion_value: float | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def champion_version(model_name: str, alias: str = CHAMPION):
    """The version holding ``alias``, or None (also when the registered model does not exist yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def run_exists(run_id: str) -> bool:
    """Whether the current tracking store holds ``run_id`` (DVC's run cache can restore a stage's outputs
    that name runs of a store that no longer exists)."""
    from mlflow.exceptions import MlflowException

    try:
        _client().get_run(run_id)
    except MlflowException:
        return False
    return True


def register_and_promote(
    model_uri: str,
    model_name: str,
    metric: str,
    value: float,
    *,
    higher_is_better: bool = True,
    run_id: str | None = None,
    description: str = "",
) -> PromotionResult:
    """Register ``model_uri`` as a new version of ``model_name`` and give it ``champion`` or ``challenger``."""
    import mlflow

    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"cannot promote {model_uri}: validation metric {metric} is missing")
    client = _client()
    current = champion_version(model_name)
    mv = mlflow.register_model(model_uri, model_name)
    client.set_model_version_tag(model_name, mv.version, METRIC_TAG, metric)
    client.set_model_version_tag(model_name, mv.version, VALUE_TAG, repr(float(value)))
    if description:
        client.update_model_version(model_name, mv.version, description=description)
    prev_value = None
    if current is None:
        alias, reason = CHAMPION, "no champion yet"
    else:
        prev_value = float(current.tags.get(VALUE_TAG, "nan"))
        prev_metric = current.tags.get(METRIC_TAG)
        better = value > prev_value if higher_is_better else value < prev_value
        if prev_metric != metric or math.isnan(prev_value):
            better, reason = True, f"champion v{current.version} has no comparable {metric}"
        else:
            reason = (f"{metric} {value:.4f} {'>' if better else '<='} champion v{current.version} "
                      f"{prev_value:.4f}") if higher_is_better else f"{metric} {value:.4f} vs {prev_value:.4f}"
        alias = CHAMPION if better else CHALLENGER
    if alias == CHAMPION and current is not None:
        client.set_registered_model_alias(model_name, "previous_champion", current.version)
    client.set_registered_model_alias(model_name, alias, mv.version)
    client.set_model_version_tag(model_name, mv.version, "slidemil.promotion", f"{alias}: {reason}")
    result = PromotionResult(model_name, str(mv.version), alias, metric, float(value),
                             None if current is None else str(current.version), prev_value, reason)
    if run_id:
        client.set_tag(run_id, "slidemil.promotion", f"v{mv.version} -> {alias}: {reason}")
        client.log_dict(run_id, result.to_dict(), "promotion.json")
    return result


def load_bundle(model_name: str, alias: str = CHAMPION) -> ModelBundle:
    """The one way every consumer (serving, dashboard, CLI) loads a registered bundle."""
    from slidemil.mlflow_model import load_bundle_from_uri

    if champion_version(model_name, alias) is None:
        raise LookupError(f"registered model {model_name!r} has no version with alias {alias!r}; "
                          "run `dvc repro promote` first")
    return load_bundle_from_uri(f"models:/{model_name}@{alias}")
