"""Ablations of the multi-scale method (methods.md section B) and of SAM-MIL (section D), same folds, one run.

Multi-scale study (the paper's Table, its *shape* on our data):

* ``single_scale``   parents only (``msa`` with fusion ``parent``), encoder trained on the coarse scale alone;
* ``conventional_ms`` one encoder per scale, each trained separately with the supervised contrastive loss on
  its own scale, parent feature concatenated with the mean of its children (fusion ``concat``);
* ``ms_cl``          the unified Siamese encoder (both scales, cross-scale positives), fusion ``concat``;
* ``ms_cl_msa``      the unified encoder + the MSA block (the method);
* ``ms_msa_random``  the MSA block on the random encoder's features (what Stage 1 buys);
* ``abmil_cl`` / ``clam_sb_cl`` and ``abmil`` / ``clam_sb``: single-scale MIL on the Stage-1 vs the random
  encoder's tile features.

SAM-MIL study (random encoder, ``kmeans`` segments as in the demo; SAM needs a checkpoint):
``abmil``, ``clam_sb``, ``sam_mil`` and ``sam_mil`` without masking (``mask_max_ratio`` 0), without pseudo-bags
(``group_alpha`` 0, so L_pb is off) and without the consistency loss (``consistency_alpha`` 0).

Cohorts: ``demo`` reads the DVC pipeline's manifest, tiles (with parents) and split settings (run ``dvc repro
tile`` first); ``glas`` tiles the GlaS images (``$SLIDEMIL_SHARED_DATA/glas``) at 112 px with s = 4 parents
(448 px at 0.5 um/px: GlaS images are too small for 224 px tiles with 16 children). Every encoder is trained on
the training slides of fold 0 only (``clean_folds`` in the output: the folds whose validation and test slides
no encoder saw); all folds are reported, fold 0 apart. Runs are logged to a throw-away MLflow store under the
cache (one experiment per cohort: compare the variants there).

    python benchmarks/ablations.py --cohort demo          # ~15 min on 2 CPU cores
    python benchmarks/ablations.py --cohort glas --folds 5

Prints a markdown table and writes everything measured to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from slidemil.data.manifest import read_manifest
from slidemil.data.splits import SplitConfig, make_splits
from slidemil.data.tile_batch import SlideJob, TileOutputs, tile_slides
from slidemil.encoders.registry import build_encoder
from slidemil.features.extract import extract_many
from slidemil.methods import SlideData, TileSetView, get_method
from slidemil.pretrain import MultiScaleSlide, PretrainConfig, pretrain, store_reader
from slidemil.segmenters.base import SlideInput
from slidemil.segmenters.registry import build_segmenter
from slidemil.slides.backends import open_slide
from slidemil.slides.tiling import TilingParams
from slidemil.slides.tissue import TissueParams
from slidemil.store import read_feature_layer, read_tile_set
from slidemil.tracking import setup_tracking
from slidemil.training.config import TrainConfig
from slidemil.training.cross_validation import CVSpec, run_cross_validation
from slidemil.training.data import CachedSource

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("ablations")
ENCODER, SEED = "resnet18", 0


@dataclass
class Cohort:
    name: str
    slides: pd.DataFrame  # slide_id, case_id, label, abs_path, mpp
    classes: list[str]
    tiling: TilingParams
    tissue: TissueParams
    tiles_dir: Path
    split: SplitConfig
    trainer: TrainConfig
    methods: dict  # params.yaml train.methods (demo-sized configs)
    pretrain: dict  # params.yaml pretrain.config


def demo_cohort(cache: Path, folds: int | None) -> Cohort:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    slides = read_manifest(REPO / p["validate"]["manifest_out"])
    split = SplitConfig(**{**p["train"]["splits"], **({"folds": folds} if folds else {})})
    trainer = TrainConfig.from_dict(p["train"]["trainer"])
    tiling = TilingParams.from_dict({k: v for k, v in p["tiling"].items() if k != "workers"})
    if not (REPO / p["tile"]["tiles_dir"]).is_dir():
        raise SystemExit("no demo tiles: run `dvc repro tile` first")
    return Cohort("demo", slides, list(p["data"]["classes"]), tiling, TissueParams.from_dict(p["tissue"]["params"]),
                  REPO / p["tile"]["tiles_dir"], split, trainer, p["train"]["methods"], p["pretrain"]["config"])


def glas_cohort(cache: Path, folds: int | None) -> Cohort:
    data = Path(os.environ.get("SLIDEMIL_SHARED_DATA", REPO.parent / "shared" / "data")) / "glas"
    if not (data / "labels.csv").is_file():
        raise SystemExit(f"{data}/labels.csv not found; set SLIDEMIL_SHARED_DATA")
    labels = pd.read_csv(data / "labels.csv", dtype=str)
    labels["abs_path"] = [str(data / x) for x in labels["image"]]
    labels["mpp"] = 0.62
    tiling = TilingParams(tile_px=112, target_mpp=0.5, min_tissue=0.25, multiscale_factor=4)
    tissue = TissueParams.from_dict({"a_t": 0.01, "a_h": 0.01})
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    methods = {**p["train"]["methods"], "msa": {**p["train"]["methods"]["msa"], "bag_size": 4}}
    trainer = TrainConfig(max_epochs=40, min_epochs=10, patience=10, devices=1)
    return Cohort("glas", labels, ["benign", "malignant"], tiling, tissue, cache / "glas" / "tiles",
                  SplitConfig(mode="kfold", folds=folds or 5, val_frac=0.2, seed=0), trainer, methods,
                  {**p["pretrain"]["config"], "input_px": 112, "children_per_parent": 4})


def tile_glas(c: Cohort) -> None:
    jobs = [SlideJob(r.slide_id, r.abs_path, mpp=float(r.mpp)) for r in c.slides.itertuples()]
    out = c.tiles_dir.parent
    res = tile_slides(jobs, c.tiling, c.tissue, TileOutputs(out / "tiles", out / "tissue", out / "qc"), workers=2,
                      progress=False)
    failed = [r.slide_id for r in res if r.status == "failed"]
    if failed:
        raise SystemExit(f"tiling failed for {failed}")


def tile_sets(c: Cohort, sid: str) -> dict:
    path = c.tiles_dir / f"{sid}.h5"
    return {"tiles": read_tile_set(path, "tiles"), "parents": read_tile_set(path, "parents")}


def usable(c: Cohort) -> pd.DataFrame:
    """Slides with at least one parent that kept a child (the multi-scale methods need both scales)."""
    ok = []
    for sid in c.slides["slide_id"]:
        ch = tile_sets(c, sid)["parents"].children
        ok.append(ch is not None and len(ch) > 0 and bool((ch >= 0).any()))
    return c.slides[np.array(ok)].reset_index(drop=True)


def train_encoder(c: Cohort, fit_ids: list[str], scales: str, out: Path) -> str:
    """A Stage-1 encoder on ``fit_ids`` (``scales``: both | coarse | fine); returns its checkpoint path."""
    if (out / "encoder.pt").is_file():
        return str(out / "encoder.pt")
    labels = dict(zip(c.slides["slide_id"], c.slides["label"], strict=True))
    sets = [tile_sets(c, s) for s in fit_ids]
    ms = [MultiScaleSlide(s, c.classes.index(labels[s]), t["parents"].children) for s, t in zip(fit_ids, sets,
                                                                                               strict=True)]
    cfg = PretrainConfig.from_dict({**c.pretrain, "scales": scales, "probe_tiles_per_slide": 0})
    res = pretrain(ms, store_reader(sets), cfg, out)
    log.info("encoder (%s scales): validation loss %.3f -> %.3f (epoch %d)", scales,
             res.record["initial_val_loss"], res.record["best_val_loss"], res.record["best_epoch"])
    return str(res.checkpoint)


def encode(c: Cohort, weights: str, tile_sets: list[str], out: Path) -> Path:
    enc = build_encoder(ENCODER, weights, seed=SEED)
    extract_many([c.tiles_dir / f"{s}.h5" for s in c.slides["slide_id"]], enc, out, tile_sets=tile_sets,
                 batch_size=32, progress=False)
    return out


def segment(c: Cohort, feats: Path, tissue_dir: Path) -> dict:
    """k-means segments of each slide over the random encoder's tile features (the demo's offline default)."""
    seg = build_segmenter("kmeans", {"kmeans": {"n_clusters": 8, "seed": 0}})
    out = {}
    for r in c.slides.itertuples():
        tiles = read_tile_set(c.tiles_dir / f"{r.slide_id}.h5")
        tissue = tissue_dir / f"{r.slide_id}.geojson"
        contours = json.loads(tissue.read_text()) if tissue.is_file() else None
        with open_slide(tiles.slide_path, mpp=tiles.geometry.slide_mpp) as reader:
            out[r.slide_id], _ = seg.segment(SlideInput.from_tissue(
                r.slide_id, tiles.coords, tiles.geometry.level0_px, contours, reader,
                read_feature_layer(feats / f"{r.slide_id}.h5").features))
    return out


def source(c: Cohort, feats: dict[str, Path], segments: dict | None = None) -> CachedSource:
    """Each tile set's features from its own folder (two encoders for the conventional baseline)."""

    def load(sid: str) -> SlideData:
        sets = tile_sets(c, sid)
        views = {n: TileSetView(sets[n].coords, int(sets[n].geometry.level0_px), sets[n].children) for n in feats}
        arrays = {n: read_feature_layer(d / f"{sid}.h5", n).features for n, d in feats.items()}
        return SlideData(sid, None, views, arrays, {"segments": segments[sid]} if segments else {})

    return CachedSource(load)


def cross_validate(c: Cohort, splits: pd.DataFrame, name: str, method: str, over: dict, src: CachedSource,
                   dims: dict[str, int], out: Path) -> dict:
    m = get_method(method)
    cfg = m.resolve_config({**c.methods.get(method, {}), **over}, n_classes=len(c.classes), feature_dims=dims)
    context = {"components": {"encoders": {ts: {"name": ENCODER, "weights": "benchmark", "feature_dim": d}
                                           for ts, d in dims.items() if ts in m(cfg).input_dims()}},
               "tile_sets": list(dims), "tiling": asdict(c.tiling), "tissue": c.tissue.to_dict(), "heatmap": {}}
    t0 = time.perf_counter()
    res = run_cross_validation(c.slides[["slide_id", "label"]], splits,
                               CVSpec(method, cfg, c.trainer, c.classes, context, family=name), src, out / name)
    pf = res.per_fold
    row = {"method": method, "overrides": over, "test_auc": res.summary["test"]["auc"],
           "test_balanced_accuracy": res.summary["test"]["balanced_accuracy"],
           "val_auc": res.summary["val"]["auc"], "fold0_test_auc": float(pf.loc[pf.fold == 0, "test_auc"].iloc[0]),
           "seconds": round(time.perf_counter() - t0, 1)}
    log.info("%s: test AUC %.3f +/- %.3f (fold 0: %.3f), %.0f s", name, row["test_auc"]["mean"],
             row["test_auc"]["std"], row["fold0_test_auc"], row["seconds"])
    return row


def markdown(result: dict) -> str:
    lines = [f"cohort {result['cohort']}: {result['n_slides']} slides, {result['n_folds']} folds "
             f"({result['split']['mode']}), encoders trained on fold 0's training slides (clean folds: "
             f"{result['clean_folds']})", "",
             "| variant | method | test AUC (mean +/- std) | fold-0 test AUC | test balanced acc | val AUC | s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["variants"].items():
        t, b, v = r["test_auc"], r["test_balanced_accuracy"], r["val_auc"]
        lines.append(f"| {name} | {r['method']} {r['overrides'] or ''} | {t['mean']:.3f} +/- {t['std']:.3f} | "
                     f"{r['fold0_test_auc']:.3f} | {b['mean']:.3f} +/- {b['std']:.3f} | {v['mean']:.3f} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cohort", choices=("demo", "glas"), default="demo")
    ap.add_argument("--folds", type=int, default=None, help="folds (default: the cohort's)")
    ap.add_argument("--study", choices=("all", "multiscale", "sammil"), default="all")
    ap.add_argument("--cache-dir", type=Path, default=REPO / "benchmarks" / ".cache" / "ablations")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/ablations_<cohort>.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "mlflow", "alembic", "slidemil"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    cache = args.cache_dir.resolve() / args.cohort
    t_all = time.perf_counter()
    c = (demo_cohort if args.cohort == "demo" else glas_cohort)(cache, args.folds)
    if args.cohort == "glas":
        tile_glas(c)
    c.slides = usable(c)
    splits = make_splits(c.slides, c.split)
    fold0 = splits[splits.fold == 0]
    fit_ids = list(fold0.loc[fold0.split == "train", "slide_id"])
    held = set(fold0.loc[fold0.split != "train", "slide_id"])
    clean = [int(f) for f, g in splits.groupby("fold") if set(g.loc[g.split != "train", "slide_id"]) <= held]
    setup_tracking(cache / "mlflow", f"ablations-{args.cohort}")
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    rand = encode(c, "random", ["tiles", "parents"], cache / "features" / "random")
    seconds["encode_random"] = time.perf_counter() - t0
    dims = {"tiles": 512, "parents": 512}
    variants: dict[str, dict] = {}
    work = cache / "train"
    if args.study in ("all", "multiscale"):
        t0 = time.perf_counter()
        both = encode(c, train_encoder(c, fit_ids, "both", cache / "enc" / "both"), ["tiles", "parents"],
                      cache / "features" / "both")
        coarse = encode(c, train_encoder(c, fit_ids, "coarse", cache / "enc" / "coarse"), ["parents"],
                        cache / "features" / "coarse")
        fine = encode(c, train_encoder(c, fit_ids, "fine", cache / "enc" / "fine"), ["tiles"],
                      cache / "features" / "fine")
        seconds["pretrain_and_encode"] = time.perf_counter() - t0
        cl = source(c, {"tiles": both, "parents": both})
        plan = [
            ("single_scale", "msa", {"fusion": "parent"}, source(c, {"tiles": fine, "parents": coarse})),
            ("conventional_ms", "msa", {"fusion": "concat"}, source(c, {"tiles": fine, "parents": coarse})),
            ("ms_cl", "msa", {"fusion": "concat"}, cl),
            ("ms_cl_msa", "msa", {}, cl),
            ("ms_msa_random", "msa", {}, source(c, {"tiles": rand, "parents": rand})),
            ("abmil_cl", "abmil", {}, source(c, {"tiles": both})),
            ("clam_sb_cl", "clam_sb", {}, source(c, {"tiles": both})),
        ]
        for name, method, over, src in plan:
            use = dims if method == "msa" else {"tiles": 512}
            variants[name] = cross_validate(c, splits, name, method, over, src, use, work)
    if args.study in ("all", "sammil"):
        t0 = time.perf_counter()
        tissue_dir = (REPO / "data" / "tissue") if args.cohort == "demo" else c.tiles_dir.parent / "tissue"
        segs = segment(c, rand, tissue_dir)
        seconds["segment"] = time.perf_counter() - t0
        src = source(c, {"tiles": rand}, segs)
        plan = [("abmil", "abmil", {}), ("clam_sb", "clam_sb", {}), ("sam_mil", "sam_mil", {}),
                ("sam_mil_no_masking", "sam_mil", {"mask_max_ratio": 0.0}),
                ("sam_mil_no_pseudo_bags", "sam_mil", {"group_alpha": 0.0}),
                ("sam_mil_no_consistency", "sam_mil", {"consistency_alpha": 0.0})]
        for name, method, over in plan:
            variants[name] = cross_validate(c, splits, name, method, over, src, {"tiles": 512}, work)
    seconds["total"] = time.perf_counter() - t_all
    result = {
        "benchmark": "ablations", "cohort": args.cohort,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "n_slides": len(c.slides), "n_folds": int(splits["fold"].nunique()), "split": c.split.__dict__,
        "clean_folds": clean, "tiling": asdict(c.tiling), "trainer": c.trainer.to_dict(),
        "pretrain": c.pretrain, "methods": {k: c.methods.get(k, {}) for k in ("msa", "sam_mil", "abmil")},
        "variants": variants, "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }
    out = args.out or REPO / "benchmarks" / "results" / f"ablations_{args.cohort}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(markdown(result))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
