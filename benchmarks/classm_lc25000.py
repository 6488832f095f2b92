"""CLASS-M vs the supervised baseline and four ablations on LC25000-dev with 5% of the training tiles labelled.

    PYTHONPATH=src python -m benchmarks.classm_lc25000 [--seeds 0 1 2] [--workers 2]

Data: ``$SLIDEMIL_SHARED_DATA/lc25000_dev`` (3 classes, ``group`` = near-copies of one source tile). Splits are
by group (70 / 10 / 20 % of each class's groups, split seed 0, fixed), so near-copies never cross a split.
Each seed draws a different 5% of each class's training tiles as labelled; the rest are the unlabelled pool.
One stain matrix per group (the "slide" of LC25000: one source image) is fitted from the full-resolution
224 px images with :func:`slidemil.stains.fit_stain_matrix`, then tiles are downscaled to ``--px``.

The configuration is a small CPU one (stated in the results): random-init ResNet-18s, ``--px`` px tiles,
few steps, Adam 1e-3 (the article's RMSprop 1e-4 learns too slowly in this budget), lambda_u ramp shortened
in proportion to the run. Variants: CLASS-M; supervised = the same two-encoder net trained with L_x on the
labelled tiles only (no pseudo-labels, no L_c, no MixUp); no L_c; no stain separation (R and G channels as
the two views); no MixUp; no RGB augmentation (no colour jitter before separation).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from slidemil.store.tile_labels import group_split

VARIANTS: dict[str, dict] = {
    "CLASS-M": {},
    "supervised (labelled only)": {"batch_unlabelled": 0, "lambda_c": 0.0, "mixup_alpha": 0.0},
    "- L_c": {"lambda_c": 0.0},
    "- stain separation (R/G views)": {"views": "rg"},
    "- MixUp": {"mixup_alpha": 0.0},
    "- RGB augmentation": {"color_jitter": 0.0},
}
CLASSES = ["lung_aca", "lung_n", "lung_scc"]

_DATA: dict = {}  # filled before the worker pool forks


def shared_root() -> Path:
    return Path(os.environ.get("SLIDEMIL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def load(root: Path, px: int) -> dict:
    """Images downscaled to ``px``, labels, groups and one stain matrix per group (fitted at full size)."""
    from slidemil.stains import FITTED, fit_stain_matrix, sample_pixels

    table = pd.read_csv(root / "labels.csv")
    full = [cv2.cvtColor(cv2.imread(str(root / p)), cv2.COLOR_BGR2RGB) for p in table["path"]]
    matrices = {}
    for g, rows in table.groupby("group").indices.items():
        matrices[g] = fit_stain_matrix(sample_pixels([full[i] for i in rows], 10), name=str(g))
    small = np.stack([cv2.resize(im, (px, px), interpolation=cv2.INTER_AREA) for im in full])
    return {"rgb": small, "labels": table["label"].map({c: i for i, c in enumerate(CLASSES)}).to_numpy(),
            "groups": table["group"].to_numpy(), "matrices": [matrices[g] for g in table["group"]],
            "n_fallback": sum(m.source != FITTED for m in matrices.values()), "n_groups": len(matrices)}


def subsample(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    if n <= 0 or rows.size <= n:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, n, replace=False))


def tile_data(rows: np.ndarray, labels: np.ndarray | None = None):
    from slidemil.training.tiles import TileData

    d = _DATA
    return TileData(d["rgb"][rows], d["labels"][rows] if labels is None else labels,
                    [d["matrices"][i] for i in rows], d["groups"][rows])


def run_one(job: tuple[str, int, dict]) -> dict:
    import torch

    from slidemil.methods import get_method
    from slidemil.training.tiles import train_tiles

    torch.set_num_threads(1)
    variant, seed, cfg = job
    d = _DATA
    train_rows = d["split"]["train"]
    labels = np.full(train_rows.size, -1, dtype=np.int64)
    rng = np.random.default_rng(1000 + seed)
    truth = d["labels"][train_rows]
    for c in range(len(CLASSES)):
        rows = np.flatnonzero(truth == c)
        pick = rng.choice(rows, max(1, round(d["label_frac"] * rows.size)), replace=False)
        labels[pick] = c
    keep = np.sort(np.concatenate([np.flatnonzero(labels >= 0),
                                   subsample(np.flatnonzero(labels < 0), d["pool"], seed)]))
    method_cls = get_method("class_m")
    method = method_cls(method_cls.resolve_config({**cfg, **VARIANTS[variant]}, n_classes=3, feature_dims={}))
    res = train_tiles(method, tile_data(train_rows[keep], labels[keep]), tile_data(d["split"]["val"]), CLASSES,
                      test=tile_data(d["split"]["test"]), seed=seed)
    return {"variant": variant, "seed": seed, "n_labelled": int((labels >= 0).sum()),
            "n_unlabelled": int((labels[keep] < 0).sum()), "best_epoch": res.best_epoch,
            "val_balanced_accuracy": res.val["balanced_accuracy"],
            "test_balanced_accuracy": res.test["balanced_accuracy"], "test_macro_f1": res.test["macro_f1"],
            "test_confusion": res.test_confusion, "wall_s": res.wall_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=shared_root() / "lc25000_dev")
    ap.add_argument("--px", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8, help="optimisation steps per epoch")
    ap.add_argument("--ramp-epochs", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=8, help="labelled and unlabelled tiles per step (each)")
    ap.add_argument("--label-frac", type=float, default=0.05)
    ap.add_argument("--pool", type=int, default=600, help="unlabelled tiles kept per run")
    ap.add_argument("--val-tiles", type=int, default=90)
    ap.add_argument("--test-tiles", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/classm_lc25000.json"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    _DATA.update(load(args.data, args.px))
    split = group_split(_DATA["groups"], _DATA["labels"], {"val": 0.1, "test": 0.2, "train": 0.7}, seed=0)
    split["val"] = subsample(split["val"], args.val_tiles, 1)
    split["test"] = subsample(split["test"], args.test_tiles, 2)
    _DATA.update(split=split, label_frac=args.label_frac, pool=args.pool)
    load_s = time.perf_counter() - t0
    cfg = {"input_px": args.px, "crop_pad": max(1, args.px // 16), "optimizer": "adam", "lr": 1e-3,
           "epochs": args.epochs, "steps_per_epoch": args.steps, "ramp_epochs": args.ramp_epochs,
           "batch_labelled": args.batch, "batch_unlabelled": args.batch}
    jobs = [(v, s, cfg) for s in args.seeds for v in args.variants]
    with mp.get_context("fork").Pool(args.workers) as pool:
        rows = []
        for r in pool.imap_unordered(run_one, jobs):
            rows.append(r)
            print(f"{r['variant']:<32} seed {r['seed']}: test bal. acc {r['test_balanced_accuracy']:.3f} "
                  f"(val {r['val_balanced_accuracy']:.3f}, {r['wall_s']:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    summary = (df.groupby("variant", sort=False)
               .agg(mean=("test_balanced_accuracy", "mean"), std=("test_balanced_accuracy", "std"),
                    n=("seed", "count"), wall_s=("wall_s", "mean"))
               .reindex([v for v in args.variants]).reset_index())
    out = {"config": {**cfg, "label_frac": args.label_frac, "pool": args.pool, "val_tiles": int(split["val"].size),
                      "test_tiles": int(split["test"].size), "train_tiles": int(split["train"].size),
                      "seeds": args.seeds, "workers": args.workers, "weights": "random",
                      "stain_groups": _DATA["n_groups"], "stain_fallbacks": int(_DATA["n_fallback"])},
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_s": load_s,
                       "total_s": time.perf_counter() - t0},
           "summary": summary.to_dict(orient="records"), "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(summary.to_string(index=False))
    print(f"total {out['machine']['total_s']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
