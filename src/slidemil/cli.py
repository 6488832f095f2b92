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
    from slidemil.tracking import open_tracking
    from slidemil.utils.atomic import atomic_path
    from slidemil.utils.geojson import write_geojson

    open_tracking(Path(args.project))  # read-only: predicting never creates a store or an experiment
    _note(f"loading {args.model_name}@{args.alias}")
    bundle = load_bundle(args.model_name, args.alias)
    _note(f"{Path(args.slide).name}: tissue, tiles, features, prediction")
    pred = SlidePredictor(bundle).predict(args.slide, mpp=args.mpp, top_k=args.top_k, progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if pred.heatmap_png:
        with atomic_path(out / f"{pred.slide_id}_heatmap.png") as tmp:
            tmp.write_bytes(pred.heatmap_png)
        written.append(out / f"{pred.slide_id}_heatmap.png")
    if pred.geojson:
        written.append(write_geojson(out / f"{pred.slide_id}_tiles.geojson", pred.geojson))
    print(json.dumps(pred.summary(), indent=2))
    for path in written:
        _note(f"wrote {path}")
    return 0


def _note(message: str) -> None:
    """Progress and output paths go to stderr, so stdout stays the JSON summary."""
    print(message, file=sys.stderr, flush=True)


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


def build_parser() -> argparse.ArgumentParser:
    """Every sub-command with its options; each option has a help text and shows its default."""
    from slidemil import __version__

    fmt = argparse.ArgumentDefaultsHelpFormatter
    ap = argparse.ArgumentParser(prog="slidemil", description=__doc__, formatter_class=fmt)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="print a slide's dimensions, levels, mpp and objective", formatter_class=fmt)
    info.add_argument("slide", help="slide file (.svs, .tiff, .ndpi, ..., a DICOM folder or a plain image)")
    info.add_argument("--mpp", type=float, default=None, help="microns per pixel, for files without it")
    info.set_defaults(func=_info)
    pred = sub.add_parser("predict", help="diagnose one slide with a registered model (heatmap + GeoJSON)",
                          formatter_class=fmt)
    pred.add_argument("slide", help="slide file to diagnose")
    pred.add_argument("--mpp", type=float, default=None,
                      help="microns per pixel, for files without it (e.g. 0.5 for a 20x scan)")
    pred.add_argument("--model-name", default="slidemil-demo", help="MLflow registered model")
    pred.add_argument("--alias", default="champion", help="version alias of the registered model")
    pred.add_argument("--project", default=".",
                      help="project root holding the MLflow store mlflow.db (MLFLOW_TRACKING_URI wins); read only")
    pred.add_argument("--top-k", type=int, default=5, help="top-attention tiles listed in the summary")
    pred.add_argument("--out", default="predictions", help="folder for <slide>_heatmap.png and <slide>_tiles.geojson")
    pred.set_defaults(func=_predict)
    ev = sub.add_parser("evaluate", formatter_class=fmt,
                        help="validate a registered model on an external cohort (metrics with CIs, "
                                         "calibration, heatmaps, report)")
    ev.add_argument("--model", required=True, help="NAME@ALIAS or NAME/VERSION, e.g. slidemil-demo@champion")
    ev.add_argument("--manifest", required=True, help="CSV: slide_id, case_id, path, label (+ optional mpp)")
    ev.add_argument("--out", required=True, help="output folder")
    ev.add_argument("--cohort", default=None, help="cohort name (default: the manifest's folder name)")
    ev.add_argument("--mpp", type=float, default=None, help="mpp for slides whose file and manifest have none")
    ev.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    ev.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    ev.add_argument("--no-heatmaps", action="store_true", help="skip the heatmap images (faster)")
    ev.add_argument("--no-log", action="store_true", help="do not log an MLflow run")
    ev.add_argument("--project", default=".", help="project root (MLflow store; MLFLOW_TRACKING_URI wins)")
    ev.add_argument("--experiment", default="slidemil-demo", help="MLflow experiment of the training runs")
    ev.add_argument("--external-experiment", default="slidemil-external",
                    help="MLflow experiment of the evaluation run")
    ev.set_defaults(func=_evaluate)
    meth = sub.add_parser("methods", help="list the registered methods, their layers and config fields",
                          formatter_class=fmt)
    meth.add_argument("--json", action="store_true", help="machine-readable output")
    meth.set_defaults(func=_methods)
    upg = sub.add_parser("bundle-upgrade", help="convert a format-1 model bundle to format 2", formatter_class=fmt)
    upg.add_argument("bundle", help="bundle folder (holding bundle.json and weights.pt)")
    upg.add_argument("--out", default=None, help="write here instead of in place")
    upg.set_defaults(func=_bundle_upgrade)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
