"""`slidemil ...`: work outside DVC — inspect a slide, predict one slide with a registered model, evaluate a
registered model on an external cohort, list the registered methods, upgrade an old model bundle.

Kept light: heavy imports happen inside the sub-commands so `slidemil --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: how a CLI user supplies a missing pixel size
MPP_REMEDY = "pass it with --mpp (for example --mpp 0.5 for a 20x scan)"


def _info(args: argparse.Namespace) -> int:
    from slidemil.slides.backends import open_slide

    with open_slide(args.slide, mpp=args.mpp) as reader:
        print(json.dumps(reader.properties(), indent=2, default=str))
        if not reader.has_mpp:
            note = f" ({reader.mpp_note})" if reader.mpp_note else ""
            print(f"note: {reader.slide_id}: no microns-per-pixel in the file{note}; tiling needs one: "
                  f"{MPP_REMEDY}", file=sys.stderr)
    return 0


def _check_slide(path: str, mpp: float | None) -> None:
    """Open the slide and resolve its mpp: seconds before loading a model, a bad file is refused at once."""
    from slidemil.slides.backends import open_slide
    from slidemil.slides.errors import MissingMppError

    with open_slide(path, mpp=mpp) as reader:
        if not reader.has_mpp:
            raise MissingMppError(reader.slide_id, remedy=MPP_REMEDY, note=reader.mpp_note)


def _predict(args: argparse.Namespace) -> int:
    _check_slide(args.slide, args.mpp)
    from slidemil.inference import SlidePredictor
    from slidemil.registry import load_bundle
    from slidemil.tracking import setup_tracking
    from slidemil.utils.geojson import write_geojson

    setup_tracking(Path(args.project), args.experiment)
    bundle = load_bundle(args.model_name, args.alias)
    pred = SlidePredictor(bundle).predict(args.slide, mpp=args.mpp, top_k=args.top_k)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if pred.heatmap_png:
        (out / f"{pred.slide_id}_heatmap.png").write_bytes(pred.heatmap_png)
    if pred.geojson:
        write_geojson(out / f"{pred.slide_id}_tiles.geojson", pred.geojson)
    print(json.dumps(pred.summary(), indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from slidemil.external import ExternalConfig, ModelRef, evaluate_external, load_model, log_external_run
    from slidemil.tracking import setup_tracking

    try:
        ref = ModelRef.parse(args.model)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_tracking(Path(args.project), args.experiment)
    bundle, mv = load_model(ref)
    cohort = args.cohort or Path(args.manifest).resolve().parent.name
    cfg = ExternalConfig(n_boot=args.n_boot, seed=args.seed, heatmaps=not args.no_heatmaps, default_mpp=args.mpp)
    metrics = evaluate_external(bundle, args.manifest, args.out, model=f"{ref} (v{mv.version})", cohort=cohort,
                                cfg=cfg)
    if not args.no_log:
        metrics["mlflow_run_id"] = log_external_run(metrics, args.out, mv, cohort, args.external_experiment)
    print(json.dumps(metrics, indent=2))
    return 0


def _methods(args: argparse.Namespace) -> int:
    from slidemil.methods import describe_methods

    rows = describe_methods()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for row in rows:
        print(f"{row['name']}: {row['description']}")
        print(f"  layers:     {', '.join(row['layers'])}")
        print(f"  config:     {', '.join(f'{k}={v!r}' for k, v in row['config'].items())}")
        print(f"  from data:  {', '.join(row['data_fields'])}")
        print(f"  searchable: {', '.join(row['search_space']) or '-'}")
        print(f"  selection:  {row['monitor']}")
    return 0


def _bundle_upgrade(args: argparse.Namespace) -> int:
    from slidemil.bundle import upgrade_format1

    out = upgrade_format1(args.bundle, args.out)
    print(f"wrote a format-2 bundle to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="slidemil", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="print a slide's dimensions, levels, mpp and objective")
    info.add_argument("slide")
    info.add_argument("--mpp", type=float, default=None, help="microns per pixel, for files without it")
    info.set_defaults(func=_info)
    pred = sub.add_parser("predict", help="diagnose one slide with a registered model (heatmap + GeoJSON)")
    pred.add_argument("slide")
    pred.add_argument("--mpp", type=float, default=None)
    pred.add_argument("--model-name", default="slidemil-demo")
    pred.add_argument("--alias", default="champion")
    pred.add_argument("--project", default=".", help="project root (MLflow store; MLFLOW_TRACKING_URI wins)")
    pred.add_argument("--experiment", default="slidemil-demo")
    pred.add_argument("--top-k", type=int, default=5)
    pred.add_argument("--out", default="predictions")
    pred.set_defaults(func=_predict)
    ev = sub.add_parser("evaluate", help="validate a registered model on an external cohort (metrics with CIs, "
                                         "calibration, heatmaps, report)")
    ev.add_argument("--model", required=True, help="NAME@ALIAS or NAME/VERSION, e.g. slidemil-demo@champion")
    ev.add_argument("--manifest", required=True, help="CSV: slide_id, case_id, path, label (+ optional mpp)")
    ev.add_argument("--out", required=True, help="output folder")
    ev.add_argument("--cohort", default=None, help="cohort name (default: the manifest's folder name)")
    ev.add_argument("--mpp", type=float, default=None, help="mpp for slides whose file and manifest have none")
    ev.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--no-heatmaps", action="store_true")
    ev.add_argument("--no-log", action="store_true", help="do not log an MLflow run")
    ev.add_argument("--project", default=".", help="project root (MLflow store; MLFLOW_TRACKING_URI wins)")
    ev.add_argument("--experiment", default="slidemil-demo")
    ev.add_argument("--external-experiment", default="slidemil-external")
    ev.set_defaults(func=_evaluate)
    meth = sub.add_parser("methods", help="list the registered methods, their layers and config fields")
    meth.add_argument("--json", action="store_true", help="machine-readable output")
    meth.set_defaults(func=_methods)
    upg = sub.add_parser("bundle-upgrade", help="convert a format-1 model bundle to format 2")
    upg.add_argument("bundle", help="bundle folder (holding bundle.json and weights.pt)")
    upg.add_argument("--out", default=None, help="write here instead of in place")
    upg.set_defaults(func=_bundle_upgrade)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - a CLI prints the reason, not a traceback
        from slidemil.slides.errors import SlideError

        if isinstance(exc, SlideError | LookupError | FileNotFoundError) or _is_bundle_error(exc) \
                or _is_cohort_error(exc):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


def _is_cohort_error(exc: Exception) -> bool:
    if "slidemil.external" not in sys.modules:
        return False
    from slidemil.external import CohortError

    return isinstance(exc, CohortError)


def _is_bundle_error(exc: Exception) -> bool:
    """Imports the bundle module (torch) only when the error may come from it: a bad slide exits at once."""
    if "slidemil.bundle" not in sys.modules:
        return False
    from slidemil.bundle import BundleError

    return isinstance(exc, BundleError)


if __name__ == "__main__":
    sys.exit(main())
