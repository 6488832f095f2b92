"""DVC stage `pretrain` (methods.md section B.2): train the shared multi-scale encoder with the supervised
contrastive loss on the parents and children of the tile files, and register it as a checkpoint encoder.

Training slides only: the stage rebuilds the train stage's splits (`train.splits`, deterministic) and keeps the
slides that are in the training part of *every* fold, so no fold's validation or test slide (whose labels the
supervised loss would read) shapes the encoder. The result, `<out_dir>/encoder.pt` with `encoder.json`
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


def training_only(slides, split_cfg: dict) -> list[str]:
    """Slide ids in the training part of every fold."""
    splits = make_splits(slides, SplitConfig(**split_cfg))
    ever_held_out = set(splits.loc[splits.split != "train", "slide_id"])
    return [s for s in slides["slide_id"] if s not in ever_held_out]


def main() -> int:
    log = setup_logging("pretrain")
    p = load_params()
    cfg_p = p["pretrain"]
    if not p["tiling"].get("multiscale_factor"):
        log.error("pretrain needs parents: set tiling.multiscale_factor to 4 or 2")
        return 1
    classes = list(p["data"]["classes"])
    slides = read_manifest(project_path(p["validate"]["manifest_out"]))
    keep = training_only(slides, p["train"]["splits"])
    labels = dict(zip(slides["slide_id"], slides["label"], strict=True))
    store = SlideStore(project_path(p["tile"]["tiles_dir"]), project_path(p["features"]["out_dir"]))
    sets = [{name: store.tile_set(sid, name) for name in ("tiles", "parents")} for sid in keep]
    ms = [MultiScaleSlide(sid, classes.index(labels[sid]), s["parents"].children) for sid, s in zip(keep, sets,
                                                                                                   strict=True)]
    log.info("pretrain on %d of %d slides (training in every fold)", len(ms), len(slides))
    res = pretrain(ms, store_reader(sets), PretrainConfig.from_dict(cfg_p["config"]),
                   project_path(cfg_p["out_dir"]))
    rec = res.record
    summary = {k: rec[k] for k in ("name", "weights_id", "feature_dim", "start_weights_id", "best_epoch",
                                   "best_val_loss", "initial_val_loss")}
    summary |= {"weights": f"{cfg_p['out_dir']}/encoder.pt", "n_fit_slides": len(rec["fit_slides"]),
                "n_val_slides": len(rec["val_slides"])}
    write_json_atomic(project_path(cfg_p["summary"]), summary)
    log.info("pretrain: validation loss %.4f -> %.4f (epoch %d), %s", rec["initial_val_loss"],
             rec["best_val_loss"], rec["best_epoch"], rec["weights_id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
