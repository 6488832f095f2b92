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
"""

from __future__ import annotations

import sys

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
    res = pretrain(ms, store_reader(sets), PretrainConfig.from_dict(cfg_p["config"]),
                   project_path(cfg_p["out_dir"]), n_tiles=[len(s["tiles"]) for s in sets])
    rec = res.record
    summary = {k: rec[k] for k in ("name", "weights_id", "feature_dim", "start_weights_id", "best_epoch",
                                   "best_val_loss", "initial_val_loss", "probe")}
    summary |= {"weights": f"{cfg_p['out_dir']}/encoder.pt", "n_fit_slides": len(rec["fit_slides"]),
                "n_val_slides": len(rec["val_slides"]), "clean_folds": clean}
    write_json_atomic(project_path(cfg_p["summary"]), summary)
    log.info("pretrain: validation loss %.4f -> %.4f (epoch %d), %s", rec["initial_val_loss"],
             rec["best_val_loss"], rec["best_epoch"], rec["weights_id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
