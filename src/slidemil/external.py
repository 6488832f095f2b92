"""External validation: a registered model on a cohort it never saw (another hospital, scanner, stain batch).

The cohort's manifest goes through the same Great Expectations suite as training data (labels checked against
the *model's* classes), every slide through the one scoring path from raw pixels (:class:`SlidePredictor`:
tiling, encoders, calibration exactly as the bundle records them), and the results into one folder: metrics
with bootstrap 95% intervals, ECE before / after the bundle's temperature, sensitivity / specificity at the
operating point chosen on validation, per-slide predictions, heatmaps, a reliability diagram and a markdown
report. Resumable: each slide's result is kept in ``slides/<id>.json`` with a key of the bundle, the settings,
the scoring code and the slide file, and a re-run scores only slides whose key changed.
:func:`log_external_run` records it in MLflow linked to the model version (MLflow 3: metrics logged
with the version's ``model_id`` show on the version's page; tags on the version point at the run).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slidemil.bundle import CalibrationSpec, ModelBundle
from slidemil.evaluation.calibration import (
    apply_temperature,
    disease_score,
    expected_calibration_error,
    plot_reliability,
    reliability_table,
    sensitivity_specificity,
)
from slidemil.evaluation.uncertainty import bootstrap_cis
from slidemil.utils.atomic import atomic_path, write_json_atomic, write_text_atomic
from slidemil.utils.hashing import code_version, config_hash

log = logging.getLogger(__name__)


class CohortError(ValueError):
    """A cohort the model cannot be evaluated on (unknown classes, failed validation), with the reason."""


@dataclass(frozen=True)
class ModelRef:
    """``NAME@ALIAS`` or ``NAME/VERSION`` of a registered model."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, ref: str) -> ModelRef:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            if name and alias:
                return cls(name, alias=alias)
        elif "/" in ref:
            name, version = ref.rsplit("/", 1)
            if name and version.isdigit():
                return cls(name, version=version)
        raise ValueError(f"model reference {ref!r}: expected NAME@ALIAS (e.g. slidemil-demo@champion) or "
                         "NAME/VERSION (e.g. slidemil-demo/3)")

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


@dataclass(frozen=True)
class ExternalConfig:
    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0
    ece_bins: int = 10
    top_k: int = 3
    heatmaps: bool = True
    default_mpp: float | None = None
    batch_size: int = 32
    device: str = "auto"


def check_cohort_classes(labels: pd.Series, class_names: list[str], cohort: str, model: str) -> None:
    """Refuse a cohort with labels the model was not trained on: its metrics would be meaningless."""
    unknown = sorted(set(map(str, labels)) - set(class_names))
    if unknown:
        raise CohortError(f"cohort {cohort!r} has classes {unknown} that model {model} does not know (its classes: "
                          f"{class_names}); relabel the cohort or evaluate a model trained on those classes")


def validate_cohort(df: pd.DataFrame, class_names: list[str], cohort: str, model: str, out_dir: Path,
                    default_mpp: float | None = None) -> None:
    """The class check, then the training data's Great Expectations suite; reports in ``out_dir``."""
    from slidemil.data.validation import validate_manifest, write_report

    if "label" in df:
        check_cohort_classes(df["label"], class_names, cohort, model)
    report = validate_manifest(df, class_names, default_mpp)
    write_report(report, out_dir / "validation.json", out_dir / "validation.html")
    if not report.success:
        raise CohortError(f"cohort {cohort!r} failed validation (report: {out_dir / 'validation.html'}):\n"
                          f"{report.summary()}")


def cohort_metrics(y: np.ndarray, raw: np.ndarray, case_ids: np.ndarray, calibration: CalibrationSpec,
                   class_names: list[str], cfg: ExternalConfig) -> dict[str, Any]:
    """Metrics of one cohort from its labels and the model's raw probabilities (calibrated with the bundle's
    temperature here, so both ECEs come from the same predictions)."""
    calibrated = apply_temperature(raw, calibration.temperature)
    cis = bootstrap_cis(y, calibrated, case_ids=case_ids, n_boot=cfg.n_boot, level=cfg.level, seed=cfg.seed)
    neg_name = calibration.negative_class or class_names[0]
    threshold = 0.5 if calibration.threshold is None else float(calibration.threshold)
    op = sensitivity_specificity(y, calibrated, threshold, class_names.index(neg_name))
    return {
        **{m: iv.to_dict() for m, iv in cis.items()},
        "accuracy": round(float((calibrated.argmax(1) == y).mean()), 4),
        "ece": round(expected_calibration_error(y, raw, cfg.ece_bins), 4),
        "ece_calibrated": round(expected_calibration_error(y, calibrated, cfg.ece_bins), 4),
        "ece_bins": cfg.ece_bins,
        "temperature": calibration.temperature,
        "operating_point": {"threshold": threshold, "rule": calibration.rule or "default 0.5 (none in bundle)",
                            "negative_class": neg_name, **{k: _r(v) for k, v in op.items()}},
        "n_slides": int(len(y)),
        "n_cases": int(len(np.unique(case_ids.astype(str)))),
        "class_counts": {c: int((y == i).sum()) for i, c in enumerate(class_names)},
    }


def evaluate_external(bundle: ModelBundle, manifest_path: str | Path, out_dir: str | Path, *, model: str,
                      cohort: str, cfg: ExternalConfig | None = None) -> dict[str, Any]:
    """Validate, predict every slide from its pixels, write metrics / predictions / heatmaps / report."""
    from slidemil.data.manifest import read_manifest, row_mpp
    from slidemil.inference import SlidePredictor

    cfg = cfg or ExternalConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = bundle.class_names
    df = read_manifest(manifest_path)
    validate_cohort(df, names, cohort, model, out, cfg.default_mpp)
    predictor: list = []  # built on the first slide that needs scoring (a resumed run may need none)
    key = _run_key(bundle, cfg)
    rows = []
    for _, r in df.iterrows():
        done = out / "slides" / f"{r['slide_id']}.json"
        slide_key = config_hash(key, _file_stamp(r["abs_path"]), row_mpp(r))
        cached = json.loads(done.read_text()) if done.exists() else {}
        if cached.get("key") == slide_key:
            rows.append(cached["row"])
            continue
        if not predictor:
            predictor.append(SlidePredictor(bundle, device=cfg.device, batch_size=cfg.batch_size))
        row = _score(predictor[0], r, out, cfg, names)
        write_json_atomic(done, {"key": slide_key, "row": row})  # last: its presence means the slide is complete
        rows.append(row)
    preds = pd.DataFrame(rows)
    y = np.array([names.index(v) for v in preds["label"]])
    raw = preds[[f"raw_prob_{c}" for c in names]].to_numpy()
    cal = bundle.spec.calibration
    neg = names.index(cal.negative_class or names[0])
    calibrated = preds[[f"prob_{c}" for c in names]].to_numpy()
    threshold = 0.5 if cal.threshold is None else cal.threshold
    preds["disease_score"] = disease_score(calibrated, neg)
    preds["called_disease"] = preds["disease_score"] >= threshold
    preds["true_prob"] = calibrated[np.arange(len(y)), y]
    metrics = cohort_metrics(y, raw, preds["case_id"].to_numpy(), cal, names, cfg)
    metrics.update({"cohort": cohort, "model": model, "manifest": _shown_path(manifest_path),
                    "stain_normalisation": _stain_note(bundle), "bundle_fold": bundle.metadata.get("fold")})
    with atomic_path(out / "predictions.csv") as tmp:
        preds.to_csv(tmp, index=False, float_format="%.6g")
    tables = {"raw": reliability_table(y, raw, cfg.ece_bins), "calibrated": reliability_table(y, calibrated, cfg.ece_bins)}
    with atomic_path(out / "reliability.csv") as tmp:
        pd.concat([t.assign(probabilities=k) for k, t in tables.items()]).to_csv(tmp, index=False)
    plot_reliability(tables, out / "reliability.png", f"{cohort}\n{model}")
    write_json_atomic(out / "metrics.json", metrics)
    write_text_atomic(out / "report.md", render_report(metrics, preds, names))
    return metrics


def _score(predictor, r: pd.Series, out: Path, cfg: ExternalConfig, names: list[str]) -> dict[str, Any]:
    """One slide from its pixels: heatmap and top tiles written, its predictions row returned."""
    from slidemil.data.manifest import row_mpp

    pred = predictor.predict(r["abs_path"], slide_id=r["slide_id"], mpp=row_mpp(r) or cfg.default_mpp,
                             top_k=cfg.top_k, heatmap=cfg.heatmaps)
    images = {f"heatmaps/{r['slide_id']}.png": pred.heatmap_png,
              **{f"top_tiles/{r['slide_id']}/rank{t['rank']}.png": t.get("png") for t in pred.top_tiles}}
    for rel, data in images.items():
        if data:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(out / rel) as tmp:
                Path(tmp).write_bytes(data)
    raw = pred.scored.raw_probabilities or pred.probabilities
    log.info("%s: %s (true %s), %d tiles", r["slide_id"], pred.label, r["label"], pred.n_tiles)
    return {"slide_id": str(r["slide_id"]), "case_id": str(r["case_id"]), "label": str(r["label"]), "pred": pred.label,
            **{f"prob_{c}": pred.probabilities[c] for c in names},
            **{f"raw_prob_{c}": raw[c] for c in names}, "n_tiles": int(pred.n_tiles)}


#: code whose edits change a slide's prediction (a resumed run re-scores after any of them)
SCORING_CODE = ("slidemil.external", "slidemil.inference", "slidemil.scoring", "slidemil.features",
                "slidemil.slides", "slidemil.encoders", "slidemil.methods", "slidemil.stains", "slidemil.evaluation")


def _run_key(bundle: ModelBundle, cfg: ExternalConfig) -> str:
    """What a slide's cached result depends on besides the slide: the bundle (spec and weights), the output
    settings and the scoring code."""
    h = hashlib.sha256()
    for name in sorted(bundle.state_dict):
        h.update(name.encode())
        h.update(bundle.state_dict[name].detach().cpu().contiguous().numpy().tobytes())
    return config_hash(bundle.spec.model_dump(), h.hexdigest(), cfg.top_k, cfg.heatmaps, cfg.default_mpp,
                       code_version(SCORING_CODE))


def _file_stamp(path: str) -> list:
    st = Path(path).stat()
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def _shown_path(path: str | Path) -> str:
    """Relative to the working directory (the project root for the stage) when inside it: reports travel."""
    path = Path(path).resolve()
    try:
        return path.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def _stain_note(bundle: ModelBundle) -> str:
    """What the report says about stain normalisation (the bundle's record, applied by the predictor)."""
    fitter = bundle.spec.components.stain_fitter
    if not fitter or not fitter.get("normalise"):
        return "none"
    return f"{fitter.get('name')} to {fitter.get('target_name', 'a reference')}"


def with_stain_normalisation(bundle: ModelBundle, normalisation) -> ModelBundle:
    """The bundle with a stain normalisation recorded (``StainNormalisation``; None: without one), so the
    predictor normalises every tile before encoding - an evaluation-time choice the report states."""
    comp = None if normalisation is None else normalisation.to_component()
    spec = bundle.spec.model_copy(update={"components": bundle.spec.components.model_copy(
        update={"stain_fitter": comp})})
    return ModelBundle(spec, bundle.state_dict)


def cohort_stain_target(stains_dir: str | Path, fit: dict | None = None, name: str = "training cohort"):
    """``StainNormalisation`` to the median stain matrix of a cohort's ``stains`` layers (the stains stage)."""
    from slidemil.features.stain_norm import StainNormalisation, median_matrix
    from slidemil.stains import StainConfig
    from slidemil.stains.layer import read_stains

    files = sorted(Path(stains_dir).glob("*.h5"))
    if not files:
        raise CohortError(f"no stain matrices in {stains_dir}: run the stains stage (`dvc repro stains`) before "
                          "evaluating with stain normalisation")
    target = median_matrix([read_stains(f) for f in files])
    return StainNormalisation(target, StainConfig.from_dict(fit or {}), f"the {name}'s median ({len(files)} slides)")


def _r(v):
    return round(v, 4) if isinstance(v, float) else v


def _ci(m: dict) -> str:
    if m["estimate"] is None:
        return "n/a"
    lo = "n/a" if m["low"] is None else f"{m['low']:.3f}"
    hi = "n/a" if m["high"] is None else f"{m['high']:.3f}"
    return f"{m['estimate']:.3f} [{lo}, {hi}]"


def render_report(metrics: dict, preds: pd.DataFrame, class_names: list[str], worst: int = 5) -> str:
    """A markdown report a collaborator can read without the dashboard."""
    op = metrics["operating_point"]
    auc = metrics["auc"]
    lines = [
        f"# External validation: {metrics['cohort']}",
        "",
        f"Model `{metrics['model']}` (bundle of fold {metrics.get('bundle_fold')}) on `{metrics['manifest']}`: "
        f"{metrics['n_slides']} slides of {metrics['n_cases']} patients "
        f"({', '.join(f'{c} {n}' for c, n in metrics['class_counts'].items())}).",
        f"Stain normalisation: **{metrics['stain_normalisation']}**.",
        "",
        f"| metric | value [{int(auc['level'] * 100)}% CI] |",
        "|---|---|",
        f"| AUC ({'one-vs-rest macro' if len(class_names) > 2 else 'binary'}) | {_ci(auc)} |",
        f"| balanced accuracy | {_ci(metrics['balanced_accuracy'])} |",
        f"| macro F1 | {_ci(metrics['macro_f1'])} |",
        f"| accuracy | {metrics['accuracy']:.3f} |",
        f"| ECE raw ({metrics['ece_bins']} equal-width bins) | {metrics['ece']:.3f} |",
        f"| ECE calibrated (T = {metrics['temperature']:.3f}, fitted on validation) | {metrics['ece_calibrated']:.3f} |",
        f"| sensitivity at the validation operating point | {_fmt(op['sensitivity'])} (n = {op['n_positive']}) |",
        f"| specificity at the validation operating point | {_fmt(op['specificity'])} (n = {op['n_negative']}) |",
        "",
        f"Intervals: percentile bootstrap, {auc['n_boot']} resamples of {auc['unit']}s ({auc['n_units']}); "
        f"AUC defined (two or more classes drawn) in {auc['n_valid']} of them. Operating point: disease = "
        f"1 - p({op['negative_class']}) >= {op['threshold']:.4f} ({op['rule']}).",
        "",
        "![reliability](reliability.png)",
        "",
        f"## The {worst} worst slides (lowest probability of the true class)",
        "",
        "| slide | case | true | predicted | p(true) |",
        "|---|---|---|---|---|",
    ]
    for r in preds.sort_values("true_prob").head(worst).itertuples():
        lines.append(f"| {r.slide_id} | {r.case_id} | {r.label} | {r.pred} | {r.true_prob:.3f} |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


# ---- MLflow ---------------------------------------------------------------------------------------------------
def resolve_version(ref: ModelRef):
    """The registry's ModelVersion for ``ref`` (LookupError with the remedy when missing)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        if ref.alias:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        return client.get_model_version(ref.name, ref.version)
    except MlflowException as exc:
        raise LookupError(f"registered model {ref} not found ({exc.message.splitlines()[0]}); run "
                          "`dvc repro promote` first") from exc


def load_model(ref: ModelRef) -> tuple[ModelBundle, Any]:
    """(bundle, ModelVersion) of a registered model."""
    from slidemil.mlflow_model import load_bundle_from_uri

    mv = resolve_version(ref)
    return load_bundle_from_uri(f"models:/{ref.name}/{mv.version}"), mv


def flat_metrics(metrics: dict) -> dict[str, float]:
    """``external.auc``, ``external.auc_ci_low``, ... as MLflow metrics (None dropped)."""
    out: dict[str, float] = {}
    for name in ("auc", "balanced_accuracy", "macro_f1"):
        m = metrics[name]
        for key, suffix in (("estimate", ""), ("low", "_ci_low"), ("high", "_ci_high")):
            if m[key] is not None:
                out[f"external_{name}{suffix}"] = float(m[key])
    for name in ("accuracy", "ece", "ece_calibrated", "temperature"):
        out[f"external_{name}"] = float(metrics[name])
    for name in ("sensitivity", "specificity", "threshold"):
        v = metrics["operating_point"][name]
        if v is not None:
            out[f"external_{name}"] = float(v)
    return out


def logged_model_id(mv) -> str | None:
    """The MLflow 3 logged model behind a registry version: ``mv.model_id``, or the ``models:/<id>`` source of a
    version registered from a run's model (the sqlite store leaves ``model_id`` empty there)."""
    model_id = getattr(mv, "model_id", None)
    if model_id:
        return model_id
    source = str(getattr(mv, "source", "") or "")
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def log_external_run(metrics: dict, out_dir: str | Path, mv, cohort: str, experiment: str) -> str:
    """One MLflow run per cohort evaluation; its metrics are linked to the model version's logged model, and
    the version gets tags naming the run and its AUC with CI."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelInput

    mlflow.set_experiment(experiment)
    preds = pd.read_csv(Path(out_dir) / "predictions.csv")
    with mlflow.start_run(run_name=f"external-{cohort}", tags={
            "slidemil.kind": "external", "slidemil.cohort": cohort, "slidemil.model_name": mv.name,
            "slidemil.model_version": str(mv.version)}) as run:
        mlflow.log_params({"cohort": cohort, "model": f"{mv.name}/{mv.version}", "manifest": metrics["manifest"],
                           "n_slides": metrics["n_slides"], "stain_normalisation": metrics["stain_normalisation"],
                           "n_boot": metrics["auc"]["n_boot"], "ci_unit": metrics["auc"]["unit"]})
        dataset = mlflow.data.from_pandas(preds[["slide_id", "case_id", "label"]], name=cohort)
        model_id = logged_model_id(mv)
        mlflow.log_input(dataset, context="external")
        if model_id:
            mlflow.log_input(model=LoggedModelInput(model_id))
        mlflow.log_metrics(flat_metrics(metrics), model_id=model_id, dataset=dataset)
        mlflow.log_artifacts(str(out_dir), "external")
        run_id = run.info.run_id
    client = MlflowClient()
    auc = metrics["auc"]
    client.set_model_version_tag(mv.name, mv.version, f"slidemil.external.{cohort}",
                                 f"AUC {_ci(auc)}, ECE {metrics['ece']:.3f} -> {metrics['ece_calibrated']:.3f}; "
                                 f"run {run_id}")
    client.set_model_version_tag(mv.name, mv.version, f"slidemil.external.{cohort}.run_id", run_id)
    return run_id
