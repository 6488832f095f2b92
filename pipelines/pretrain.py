"""DVC stage `pretrain` (methods.md section B.2): train the shared multi-scale encoder with the supervised
contrastive loss on the parents and children of the tile files, and register it as a checkpoint encoder.

Training slides only: the stage rebuilds the train stage's splits (`train.splits`, deterministic) and keeps the
slides that are in the training part of every fold listed in `pretrain.train_folds` (null = all folds), so no
validation or test slide of those folds (whose labels the supervised loss reads) shapes the encoder. The
summary names the folds whose held-out slides the encoder never saw (`clean_folds`): only their validation and
test figures are free of encoder leakage. With Monte-Carlo folds on a small cohort, "every fold" leaves too
few slides (on the demo: one case), hence the demo's `[0]`. The result, `<out_dir>/encoder.pt` with `encoder.json`
(name, weights path, weights id, loss history), is used by setting `features.encoder.name` and
`features.encoder.weights` to it.

The encoder check (`pretrain.probe`, issue #8): a linear probe on ground-truth tile labels (tumour masks of the
manifest, :func:`slidemil.pretrain.probe.ground_truth_tile_labels`), fitted on tiles of the encoder's training
slides and scored on tiles of the held-out (validation + test) slides of the first clean fold, for the start
weights and the kept encoder on identical tiles. The summary records both figures and the validation loss curve.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipelines.common import load_params, project_path, setup_logging
from slidemil.data.manifest import read_manifest
from slidemil.data.splits import SplitConfig, make_splits
from slidemil.pretrain import MultiScaleSlide, PretrainConfig, pretrain, store_reader
from slidemil.store import SlideStore
from slidemil.utils.atomic import write_json_atomic


def training_only(slides, split_cfg: dict, folds: list[int] | None = None) -> tuple[list[str], list[int]]:
    """Slide ids in the training part of every fold in ``folds`` (None = all folds), and the folds whose
    validation and test slides are all outside that set (their figures are free of encoder leakage)."""
    splits = make_splits(slides, SplitConfig(**split_cfg))
    chosen = splits if folds is None else splits[splits.fold.isin(folds)]
    held_out = set(chosen.loc[chosen.split != "train", "slide_id"])
    keep = [s for s in slides["slide_id"] if s not in held_out]
    clean = [int(f) for f, g in splits.groupby("fold") if not set(g.loc[g.split != "train", "slide_id"]) & set(keep)]
    return keep, clean


def probe_candidates(row: pd.Series, layer, label: int, normal: int, probe_p: dict):
    """A slide's probe tiles and their ground-truth labels (-1 = dropped): a normal slide's tiling-grid tiles;
    for a tumour slide with a mask, tiles on a ``level0_px / tumour_grid_div`` grid over its tumour (labelled
    by mask share), since its tiling grid holds only a few tumour tiles."""
    from slidemil.evaluation.localisation import tile_tumour_fraction
    from slidemil.pretrain.probe import ground_truth_tile_labels, tumour_grid

    px, thr = int(layer.geometry.level0_px), float(probe_p.get("tumour_fraction", 0.5))
    mask_path = row.get("abs_tumour_mask")
    mask = cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE) if isinstance(mask_path, str) and mask_path else None
    if label == normal or mask is None:
        coords = layer.coords
        fractions = None
    else:
        ds = float(row["mask_downsample"])
        coords = tumour_grid(mask > 127, ds, px, max(1, px // int(probe_p.get("tumour_grid_div", 4))))
        fractions = tile_tumour_fraction(coords, px, mask > 127, ds)
    labels = ground_truth_tile_labels(label, normal, fractions, len(coords), thr)
    return dataclasses.replace(layer, coords=coords, tissue_coverage=np.zeros(len(coords), np.float32)), labels


def held_out_slides(slides: pd.DataFrame, split_cfg: dict, fold: int) -> list[str]:
    """Validation and test slides of ``fold`` (the probe's scoring slides: a clean fold's are unseen)."""
    splits = make_splits(slides, SplitConfig(**split_cfg))
    part = set(splits.loc[(splits.fold == fold) & (splits.split != "train"), "slide_id"])
    return [s for s in slides["slide_id"] if s in part]


def ground_truth_probe(slides: pd.DataFrame, store: SlideStore, fit_ids: list[str], score_ids: list[str],
                       classes: list[str], cfg: PretrainConfig, probe_p: dict, checkpoint: Path) -> dict:
    """Probe AUC / balanced accuracy of the start and the trained encoder (fit: ``fit_ids``' tiles, scored on
    ``score_ids``' tiles, class-balanced on both sides, each tile read once for both encoders)."""
    from slidemil.encoders import build_encoder
    from slidemil.pretrain.probe import balanced_picks, embed_tiles, linear_probe

    man = slides.set_index("slide_id")
    normal = classes.index(probe_p.get("normal_class", "normal"))
    rng = np.random.default_rng(cfg.seed + 3)
    parts, out = {}, {"fit_slides": len(fit_ids), "score_slides": len(score_ids)}
    for part, ids in (("fit", fit_ids), ("score", score_ids)):
        cands = [probe_candidates(man.loc[sid], store.tile_set(sid, "tiles"), classes.index(man.at[sid, "label"]),
                                  normal, probe_p) for sid in ids]
        picks, y = balanced_picks([lab for _, lab in cands], int(probe_p["tiles_per_class"]), rng)
        read = store_reader([{"tiles": layer} for layer, _ in cands])
        cache = {(i, r): read(i, "tiles", r) for i, r in picks}
        parts[part] = (lambda i, name, r, c=cache: c[(i, r)], picks, y)
        out[f"n_{part}_tiles"] = len(picks)
        out[f"n_{part}_tiles_per_class"] = {classes[c]: int((y == c).sum()) for c in np.unique(y)}
    px = probe_p.get("input_px") or cfg.input_px
    out["input_px"] = px
    for key, weights in (("start", cfg.weights), ("trained", str(checkpoint))):
        enc = build_encoder(cfg.encoder, weights, seed=cfg.seed)
        feats = {part: embed_tiles(enc, read, picks, input_px=px) for part, (read, picks, _) in parts.items()}
        res = linear_probe(feats["fit"], parts["fit"][2], feats["score"], parts["score"][2])
        out[f"{key}_auc"], out[f"{key}_balanced_accuracy"] = res["auc"], res["balanced_accuracy"]
    return out


def main() -> int:
    log = setup_logging("pretrain")
    p = load_params()
    cfg_p = p["pretrain"]
    if not p["tiling"].get("multiscale_factor"):
        log.error("pretrain needs parents: set tiling.multiscale_factor to 4 or 2")
        return 1
    classes = list(p["data"]["classes"])
    slides = read_manifest(project_path(p["validate"]["manifest_out"]))
    keep, clean = training_only(slides, p["train"]["splits"], cfg_p.get("train_folds"))
    labels = dict(zip(slides["slide_id"], slides["label"], strict=True))
    store = SlideStore(project_path(p["tile"]["tiles_dir"]), project_path(p["features"]["out_dir"]))
    sets = [{name: store.tile_set(sid, name) for name in ("tiles", "parents")} for sid in keep]
    ms = [MultiScaleSlide(sid, classes.index(labels[sid]), s["parents"].children) for sid, s in zip(keep, sets,
                                                                                                   strict=True)]
    log.info("pretrain on %d of %d slides; folds free of encoder leakage: %s", len(ms), len(slides), clean)
    res_cfg = PretrainConfig.from_dict(cfg_p["config"])
    t0 = time.monotonic()
    res = pretrain(ms, store_reader(sets), res_cfg,
                   project_path(cfg_p["out_dir"]), n_tiles=[len(s["tiles"]) for s in sets])
    rec = res.record
    summary = {k: rec[k] for k in ("name", "weights_id", "feature_dim", "start_weights_id", "best_epoch",
                                   "best_val_loss", "initial_val_loss", "probe")}
    summary |= {"weights": f"{cfg_p['out_dir']}/encoder.pt", "n_fit_slides": len(rec["fit_slides"]),
                "n_val_slides": len(rec["val_slides"]), "clean_folds": clean,
                "val_loss_curve": [rec["initial_val_loss"]] + [h["val_loss"] for h in rec["history"]],
                "train_seconds": round(time.monotonic() - t0, 1)}
    probe_p = cfg_p.get("probe") or {}
    if probe_p.get("tiles_per_class") and clean:
        t1 = time.monotonic()
        gt = ground_truth_probe(slides, store, keep, held_out_slides(slides, p["train"]["splits"], clean[0]),
                                classes, res_cfg, probe_p, res.checkpoint)
        summary["ground_truth_probe"] = gt | {"fold": clean[0], "seconds": round(time.monotonic() - t1, 1)}
        log.info("probe (ground-truth tiles, fold %d held-out slides): AUC start %.3f -> trained %.3f, balanced "
                 "accuracy %.3f -> %.3f (%d / %d tiles)", clean[0], gt["start_auc"], gt["trained_auc"],
                 gt["start_balanced_accuracy"], gt["trained_balanced_accuracy"], gt["n_fit_tiles"],
                 gt["n_score_tiles"])
    write_json_atomic(project_path(cfg_p["summary"]), summary)
    log.info("pretrain: validation loss %.4f -> %.4f (epoch %d), %s", rec["initial_val_loss"],
             rec["best_val_loss"], rec["best_epoch"], rec["weights_id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
