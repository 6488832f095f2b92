"""The CLAM pipeline end to end on real tissue: GlaS colon glands, benign vs malignant.

Each of the 165 GlaS images (20x, about 0.62 um/px, 16 patients) is treated as one slide and run through the
same library calls as the DVC pipeline (``pipelines/tile.py``, ``features.py``, ``train.py``): tissue
segmentation and tiling, tile features, patient-grouped k-fold splits, then cross-validated training of
CLAM-SB, CLAM-MB, ABMIL and mean pooling tracked in a throw-away MLflow store. The attention of the trained
models is then scored against the GlaS gland masks on malignant test images (glands are tumour there).

With 16 patients, one k-fold split is mostly noise (test folds range from 5 to 66 images), so the CV is repeated
over several split seeds and every number is pooled over all test folds of all seeds.

Offline by default: ``--weights random`` (a seeded, untrained ResNet-18), so the numbers measure what MIL can
do on top of random convolutional features, not what a pretrained encoder would give. ``--weights imagenet``
(needs the network or a filled TORCH_HOME cache) or ``--weights path/to/checkpoint.pt`` for real features.

    python benchmarks/glas.py                  # resnet18, random weights, 5 folds x 3 seeds (~15 min, 2 CPU cores)
    python benchmarks/glas.py --split-seeds 0  # one split only (~7 min)
    python benchmarks/glas.py --weights imagenet --max-epochs 200 --min-epochs 50 --patience 20

Tiles and features are cached under ``--cache-dir`` (reused when the settings match); training always re-runs.
Prints a markdown table and writes everything measured to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from slidemil.bundle import ModelBundle
from slidemil.data.splits import SplitConfig, case_table, check_no_leakage, make_splits
from slidemil.data.tile_batch import SlideJob, TileOutputs, tile_slides
from slidemil.encoders.registry import build_encoder
from slidemil.evaluation.localisation import localisation_auroc, tile_tumour_fraction
from slidemil.evaluation.metrics import slide_metrics
from slidemil.features.extract import extract_many
from slidemil.methods import get_method
from slidemil.scoring import slide_from_features
from slidemil.slides.tiling import TilingParams
from slidemil.slides.tissue import TissueParams
from slidemil.store import SlideStore, read_feature_layer, read_tile_set
from slidemil.tracking import setup_tracking
from slidemil.training.config import TrainConfig
from slidemil.training.cross_validation import CVSpec, run_cross_validation
from slidemil.training.data import feature_file_source

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["benign", "malignant"]
ATTENTION_MODELS = ("clam_sb", "clam_mb", "abmil")
#: CLAM defaults (methods.md section A) for a binary task: no subtyping terms
CLAM_CONFIG = {"size": "small", "dropout": 0.25, "k_sample": 8, "inst_loss": "svm", "subtyping": False,
               "bag_weight": 0.7}
#: GlaS images are almost all tissue; slidemil's default a_t = a_h = 1 (512 x 512 level-0 px; CLAM's: 100 / 16)
#: would drop whole images
TISSUE = {"a_t": 0.01, "a_h": 0.01}

log = logging.getLogger("glas")


def shared_glas() -> Path:
    return Path(os.environ.get("SLIDEMIL_SHARED_DATA", REPO.parent / "shared" / "data")) / "glas"


def tag(text: str) -> str:
    """A folder-name-safe version of a setting (weights ids contain ':' and '=')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


# ---- phases ---------------------------------------------------------------------------------------------
def tile_phase(labels: pd.DataFrame, data_dir: Path, mpp: float, tiling: TilingParams, tissue: TissueParams,
               out: Path, workers: int) -> dict:
    jobs = [SlideJob(r.slide_id, str(data_dir / r.image), mpp=mpp) for r in labels.itertuples()]
    outputs = TileOutputs(out / "tiles", out / "tissue", out / "qc")
    results = tile_slides(jobs, tiling, tissue, outputs, workers=workers, progress=False)
    failed = {r.slide_id: r.error for r in results if r.status == "failed"}
    if failed:
        raise SystemExit("tiling failed:\n" + "\n".join(f"  {k}: {v}" for k, v in failed.items()))
    n = np.array([len(read_tile_set(outputs.tiles_dir / f"{s}.h5")) for s in labels["slide_id"]])
    geometry = read_tile_set(outputs.tiles_dir / f"{labels['slide_id'].iloc[0]}.h5").geometry
    return {"n_tiles": int(n.sum()), "tiles_per_slide": {"min": int(n.min()), "median": float(np.median(n)),
                                                          "max": int(n.max())},
            "tile_level0_px": int(geometry.level0_px), "tile_um": round(geometry.level0_px * mpp, 1),
            "n_tiled_now": sum(r.status == "done" for r in results)}


def check_splits(splits: pd.DataFrame, labels: pd.DataFrame) -> list[dict]:
    """Every partition of every fold needs both classes (slides) and val needs a patient of each majority label."""
    majority = case_table(labels).set_index("case_id")["label"]
    rows = []
    for fold, g in splits.groupby("fold"):
        row: dict = {"fold": int(fold)}
        for part in ("train", "val", "test"):
            p = g[g.split == part]
            counts = p["label"].value_counts()
            row[part] = {"slides": len(p), "patients": int(p["case_id"].nunique()),
                         **{c: int(counts.get(c, 0)) for c in CLASSES}}
            if any(counts.get(c, 0) == 0 for c in CLASSES):
                raise SystemExit(f"fold {fold}: {part} lacks a class ({counts.to_dict()}); change --val-frac "
                                 "or --split-seeds")
        val_majority = majority[g.loc[g.split == "val", "case_id"].unique()].value_counts()
        if any(val_majority.get(c, 0) == 0 for c in CLASSES):
            raise SystemExit(f"fold {fold}: validation has no patient whose majority label is one of {CLASSES}")
        rows.append(row)
    return rows


def train_phase(labels: pd.DataFrame, splits: pd.DataFrame, feat_dir: Path, models: list[str], trainer: TrainConfig,
                context: dict, out: Path, encoder_weights: str) -> dict:
    slides = labels[["slide_id", "label"]].copy()
    paths = {s: feat_dir / f"{s}.h5" for s in slides["slide_id"]}
    source = feature_file_source(paths)
    feature_dims = {"tiles": read_feature_layer(next(iter(paths.values()))).feature_dim}
    results = {}
    for name in models:
        method = get_method(name)
        section = {k: v for k, v in CLAM_CONFIG.items() if k in {f.name for f in fields(method.config_cls)}}
        cfg = method.resolve_config(section, n_classes=len(CLASSES), feature_dims=feature_dims)
        spec = CVSpec(name, cfg, trainer, CLASSES, context,
                      extra_params={"dataset": "glas", "encoder_weights": encoder_weights})
        start = time.perf_counter()
        res = run_cross_validation(slides, splits, spec, source, out / name)
        seconds = time.perf_counter() - start
        pf = res.per_fold
        oof = res.predictions[res.predictions.split == "test"]
        pooled = slide_metrics(oof["label"].to_numpy(), oof[[f"prob_{c}" for c in CLASSES]].to_numpy())
        results[name] = {
            "test": res.summary["test"], "val": res.summary["val"],
            "test_pooled": {k: _num(v) for k, v in pooled.items()} | {"n_slides": len(oof)},
            "per_fold": [{"fold": int(r.fold), "test_auc": _num(r.test_auc),
                          "test_balanced_accuracy": _num(r.test_balanced_accuracy), "best_epoch": int(r.best_epoch),
                          "epochs_run": int(r.epochs_run), "best_val_loss": _num(r.best_val_loss)}
                         for r in pf.itertuples()],
            "selected_fold": res.best_fold, "mlflow_parent_run_id": res.parent_run_id, "seconds": round(seconds, 1),
        }
        t = res.summary["test"]
        log.info("%s: test AUC %.3f +/- %.3f, balanced acc %.3f +/- %.3f (%d folds, %.0f s)", name,
                 t["auc"]["mean"], t["auc"]["std"], t["balanced_accuracy"]["mean"], t["balanced_accuracy"]["std"],
                 t["auc"]["n"], seconds)
    return results


def localisation_phase(labels: pd.DataFrame, splits: pd.DataFrame, data_dir: Path, tiles_dir: Path, feat_dir: Path,
                       train_dir: Path, models: list[str], threshold: float) -> dict:
    """Per-image tile-level AUROC of each attention model's malignant-class scores against the gland mask.

    Only malignant *test* images, each scored by the fold that held it out; gland fraction >= ``threshold``
    makes a tile positive. An image whose tiles are all one class cannot be scored and is counted apart.
    """
    info = labels.set_index("slide_id")
    test = splits[(splits.split == "test") & (splits.label == "malignant")]
    out = {}
    for name in (m for m in models if m in ATTENTION_MODELS):
        r = {"auroc": [], "n_one_class": 0, "n_tiles": 0, "n_gland_tiles": 0}
        for fold, g in test.groupby("fold"):
            method, model = ModelBundle.load(train_dir / name / "folds" / f"fold{fold}" / "bundle").build()
            for slide_id in g["slide_id"]:
                layer = SlideStore(tiles_dir, feat_dir).features(slide_id)
                feats, coords = layer.features, layer.coords
                level0_px = read_tile_set(tiles_dir / f"{slide_id}.h5").geometry.level0_px
                slide = slide_from_features(slide_id, feats, coords, level0_px)
                scores = method.explain(model, slide, CLASSES.index("malignant"), CLASSES)[0].values
                mask = cv2.imread(str(data_dir / info.at[slide_id, "gland_mask"]), cv2.IMREAD_GRAYSCALE) > 127
                fractions = tile_tumour_fraction(coords, level0_px, mask, 1.0)
                auroc = localisation_auroc(scores, fractions, threshold)
                r["n_tiles"] += len(fractions)
                r["n_gland_tiles"] += int((fractions >= threshold).sum())
                if auroc is None:
                    r["n_one_class"] += 1
                else:
                    r["auroc"].append(round(auroc, 4))
        out[name] = r
    return out


# ---- reporting ----------------------------------------------------------------------------------------------
def _num(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def _stats(values: list[float]) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    return {"mean": _num(v.mean()) if v.size else None, "std": _num(v.std(ddof=1)) if v.size > 1 else None,
            "n": int(v.size)}


def summarise(runs: dict[int, dict]) -> dict:
    """Pool every fold of every split seed: mean +/- std over all test folds, and the spread of per-seed means."""
    summary: dict = {"models": {}, "localisation": {}}
    models = next(iter(runs.values()))["models"]
    for name in models:
        folds = [f for r in runs.values() for f in r["models"][name]["per_fold"]]
        summary["models"][name] = {
            "test_auc": _stats([f["test_auc"] for f in folds]),
            "test_balanced_accuracy": _stats([f["test_balanced_accuracy"] for f in folds]),
            "per_seed_test_auc_mean": {s: _num(r["models"][name]["test"]["auc"]["mean"]) for s, r in runs.items()},
            "pooled_oof_auc": _stats([r["models"][name]["test_pooled"]["auc"] for r in runs.values()]),
            "pooled_oof_balanced_accuracy": _stats([r["models"][name]["test_pooled"]["balanced_accuracy"]
                                                    for r in runs.values()]),
            "best_epoch_median": float(np.median([f["best_epoch"] for f in folds])),
        }
    for name in next(iter(runs.values())).get("localisation") or {}:
        per = [r["localisation"][name] for r in runs.values()]
        n_tiles = sum(p["n_tiles"] for p in per)
        summary["localisation"][name] = {
            **_stats([a for p in per for a in p["auroc"]]),
            "per_seed_mean": {s: _num(np.mean(r["localisation"][name]["auroc"])) for s, r in runs.items()},
            "n_one_class": sum(p["n_one_class"] for p in per),
            "gland_tile_fraction": _num(sum(p["n_gland_tiles"] for p in per) / n_tiles) if n_tiles else None,
        }
    return summary


def markdown(result: dict) -> str:
    s, summ = result["settings"], result["summary"]
    seeds = s["splits"]["seeds"]
    lines = [
        f"GlaS, {s['n_slides']} images / {s['n_patients']} patients; encoder {s['encoder']['name']} "
        f"({s['encoder']['weights_id']}); tiles {s['tiling']['tile_px']} px @ {s['tiling']['target_mpp']} um/px, "
        f"min_tissue {s['tiling']['min_tissue']}, {result['tiles']['n_tiles']} tiles "
        f"({result['tiles']['tiles_per_slide']['median']:.0f}/image); {s['splits']['folds']}-fold patient-grouped "
        f"CV x {len(seeds)} split seeds {seeds}, val_frac {s['splits']['val_frac']}; max {s['trainer']['max_epochs']} "
        f"epochs, min {s['trainer']['min_epochs']}, patience {s['trainer']['patience']}, lr {s['trainer']['lr']}",
        "",
        "| model | test AUC | test balanced acc | folds | AUC per split seed | pooled out-of-fold AUC |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in summ["models"].items():
        auc, bacc, pool = m["test_auc"], m["test_balanced_accuracy"], m["pooled_oof_auc"]
        per_seed = " / ".join(f"{v:.2f}" for v in m["per_seed_test_auc_mean"].values())
        lines.append(f"| {name} | {auc['mean']:.3f} +/- {auc['std']:.3f} | {bacc['mean']:.3f} +/- {bacc['std']:.3f} "
                     f"| {auc['n']} | {per_seed} | {pool['mean']:.3f} +/- {pool['std'] or 0:.3f} |")
    if summ["localisation"]:
        lines += ["", "| model | gland-mask localisation AUROC (malignant test images) | per split seed | images |",
                  "|---|---|---|---|"]
        for name, r in summ["localisation"].items():
            per_seed = " / ".join(f"{v:.2f}" for v in r["per_seed_mean"].values())
            lines.append(f"| {name} | {r['mean']:.3f} +/- {r['std']:.3f} | {per_seed} | {r['n']} "
                         f"(+{r['n_one_class']} with one tile class) |")
    lines += ["", "wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items())]
    return "\n".join(lines)


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _resolve(path: Path) -> Path:
    return path if path.is_absolute() else REPO / path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=None, help="GlaS folder (default: $SLIDEMIL_SHARED_DATA/glas)")
    ap.add_argument("--cache-dir", type=Path, default=Path("benchmarks/.cache/glas"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/glas.json"))
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--weights", default="random", help="random | imagenet | checkpoint path")
    ap.add_argument("--encoder-seed", type=int, default=0)
    ap.add_argument("--mpp", type=float, default=0.62, help="um/px of the GlaS images (they carry none)")
    ap.add_argument("--tile-px", type=int, default=224)
    ap.add_argument("--target-mpp", type=float, default=0.5)
    ap.add_argument("--min-tissue", type=float, default=0.25)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--val-frac", type=float, default=0.2)
    ap.add_argument("--split-seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="repeat the k-fold CV with these split seeds (16 patients: one split is not enough)")
    ap.add_argument("--models", nargs="+", default=["clam_sb", "clam_mb", "abmil", "mean_pool"])
    ap.add_argument("--max-epochs", type=int, default=40)
    ap.add_argument("--min-epochs", type=int, default=10)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--workers", type=int, default=2, help="images tiled in parallel")
    ap.add_argument("--batch-size", type=int, default=32, help="feature-extraction batch")
    ap.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers per image (0: tiny images)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 because the tiny MIL models train ~20x faster single-threaded on a busy "
                         "2-core machine (raise it for encoding on an idle many-core one)")
    ap.add_argument("--localisation-threshold", type=float, default=0.5, help="gland fraction of a positive tile")
    ap.add_argument("--no-localisation", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic", "slidemil.features"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    data_dir = args.data_dir or shared_glas()
    if not (data_dir / "labels.csv").is_file():
        print(f"{data_dir}/labels.csv not found; set SLIDEMIL_SHARED_DATA or --data-dir", file=sys.stderr)
        return 2
    labels = pd.read_csv(data_dir / "labels.csv")
    cache = _resolve(args.cache_dir)
    tiling = TilingParams(tile_px=args.tile_px, target_mpp=args.target_mpp, min_tissue=args.min_tissue,
                          multiscale_factor=0)
    tissue = TissueParams.from_dict(TISSUE)
    tile_root = cache / tag(f"tiles_{args.tile_px}px_{args.target_mpp}mpp_mt{args.min_tissue}")
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()

    t0 = time.perf_counter()
    tiles = tile_phase(labels, data_dir, args.mpp, tiling, tissue, tile_root, args.workers)
    seconds["tiling"] = time.perf_counter() - t0
    log.info("tiling: %d tiles (%s per image), %.0f s", tiles["n_tiles"], tiles["tiles_per_slide"], seconds["tiling"])

    t0 = time.perf_counter()
    encoder = build_encoder(args.encoder, args.weights, seed=args.encoder_seed)
    feat_dir = tile_root / "features" / tag(f"{encoder.name}_{encoder.weights_id}")
    feats = extract_many([tile_root / "tiles" / f"{s}.h5" for s in labels["slide_id"]], encoder, feat_dir,
                         batch_size=args.batch_size, num_workers=args.loader_workers, device="auto", progress=False)
    seconds["features"] = time.perf_counter() - t0
    n_encoded = feats.n_tiles
    log.info("features: %s (%s), %d tiles encoded now (%.1f tiles/s), %.0f s", encoder.name, encoder.weights_id,
             n_encoded, feats.tiles_per_s, seconds["features"])

    trainer = TrainConfig(lr=args.lr, max_epochs=args.max_epochs, min_epochs=args.min_epochs, patience=args.patience,
                          devices=1)
    context = {
        "components": {"encoders": {"tiles": {"name": encoder.name, "weights": str(args.weights),
                                              "seed": args.encoder_seed, "weights_id": encoder.weights_id,
                                              "feature_dim": encoder.feature_dim}}},
        "tile_sets": ["tiles"],
        "tiling": {"tile_px": tiling.tile_px, "target_mpp": tiling.target_mpp, "stride_px": tiling.stride_px,
                   "min_tissue": tiling.min_tissue},
        "tissue": tissue.to_dict(),
        "heatmap": {},
    }
    setup_tracking(cache / "mlflow", "glas-benchmark")
    runs: dict[int, dict] = {}
    seconds["training"] = seconds["localisation"] = 0.0
    for seed in args.split_seeds:
        split_cfg = SplitConfig(mode="kfold", folds=args.folds, val_frac=args.val_frac, seed=seed)
        splits = make_splits(labels, split_cfg)
        check_no_leakage(splits)
        run: dict = {"splits": check_splits(splits, labels)}
        train_dir = cache / "train" / tile_root.name / feat_dir.name / tag(
            f"kfold{args.folds}_val{args.val_frac}_seed{seed}_e{args.max_epochs}")
        log.info("split seed %d: training %s", seed, ", ".join(args.models))
        t0 = time.perf_counter()
        run["models"] = train_phase(labels, splits, feat_dir, args.models, trainer, context, train_dir,
                                    encoder.weights_id)
        seconds["training"] += time.perf_counter() - t0
        if not args.no_localisation:
            t0 = time.perf_counter()
            run["localisation"] = localisation_phase(labels, splits, data_dir, tile_root / "tiles", feat_dir,
                                                     train_dir, args.models, args.localisation_threshold)
            seconds["localisation"] += time.perf_counter() - t0
        runs[seed] = run
    seconds["total"] = time.perf_counter() - t_all

    result = {
        "benchmark": "glas",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
        "settings": {
            "n_slides": len(labels), "n_patients": int(labels["case_id"].nunique()),
            "slides_per_class": labels["label"].value_counts().to_dict(), "slide_mpp": args.mpp,
            "encoder": context["components"]["encoders"]["tiles"], "tiling": context["tiling"],
            "tissue_overrides": TISSUE,
            "splits": {"mode": "kfold", "folds": args.folds, "val_frac": args.val_frac, "seeds": args.split_seeds,
                       "grouped_by": "case_id"},
            "model_config_clam": CLAM_CONFIG, "trainer": trainer.to_dict(),
            "localisation_threshold": None if args.no_localisation else args.localisation_threshold,
        },
        "tiles": tiles,
        "features": {"n_encoded_this_run": n_encoded, "cached": n_encoded == 0,
                     "tiles_per_s": round(feats.tiles_per_s, 1),
                     "device": str(torch.device("cuda" if torch.cuda.is_available() else "cpu"))},
        "summary": summarise(runs),
        "runs": {str(k): v for k, v in runs.items()},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    out = _resolve(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
