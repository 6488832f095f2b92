"""DVC stage `classm`: CLASS-M trained on the demo slides' tiles with tile labels from the ground truth
(methods.md section C): the `tile_labels` layer per slide, one MLflow run with tile metrics, a format-2 bundle
and a QuPath class-map GeoJSON per test slide.

Runs after `tile` and `stains`. Tile classes come from each slide's annotation GeoJSON (manifest column
``classm.annotation_column``; the demo's ``tumour_geojson``, QuPath style); a ``classm.labels.fraction`` of
each class's tiles on training slides is labelled, the rest is the unlabelled pool. Splits are the train
stage's case-grouped fold (``train.splits``, fold ``classm.split_fold``), so no patient is in two splits.
Validation and test tiles are scored against every annotated tile; selection is on validation balanced
accuracy. Small demo sizes are set in params.yaml (``classm.model``; the article's defaults live in
:class:`slidemil.models.classm.ClassMConfig`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.common import load_params, project_path, setup_logging
from slidemil.bundle import BundleSpec, ModelBundle
from slidemil.data.manifest import read_manifest
from slidemil.data.splits import SplitConfig, make_splits
from slidemil.evaluation.tile_geojson import class_map_geojson
from slidemil.methods import get_method
from slidemil.methods.classm import read_tile_pixels
from slidemil.slides import open_slide
from slidemil.stains.layer import KIND as STAINS
from slidemil.stains.layer import read_stains
from slidemil.stains.slide import sampled_tiles
from slidemil.store import SlideStore, tiles_digest
from slidemil.store.tile_labels import TileLabelConfig, make_tile_labels, write_tile_labels
from slidemil.tracking import setup_tracking
from slidemil.training.run_log import run_log
from slidemil.training.tiles import TileData, log_tile_fit, train_tiles
from slidemil.utils.atomic import remove_stale_temps, write_json_atomic
from slidemil.utils.geojson import write_geojson


def slide_tiles(store: SlideStore, sid: str, px: int, rows: np.ndarray | None = None):
    """The slide's tile set, the chosen rows' RGB at ``px`` and its stain matrix."""
    tiles = store.tile_set(sid)
    rows = np.arange(len(tiles)) if rows is None else rows
    with open_slide(tiles.slide_path, slide_id=sid, mpp=tiles.geometry.slide_mpp) as reader:
        rgb = read_tile_pixels(reader, tiles.coords[rows], tiles.geometry, px)
    return tiles, rgb, read_stains(store.path(sid, STAINS), tiles_digest(tiles))


def main() -> int:
    log = setup_logging("classm")
    p = load_params()
    c = p["classm"]
    torch.set_num_threads(int(c.get("num_threads") or torch.get_num_threads()))
    t0 = time.perf_counter()
    manifest = read_manifest(project_path(p["validate"]["manifest_out"]))
    splits = make_splits(manifest, SplitConfig(**p["train"]["splits"]))
    split_of = dict(splits.loc[splits["fold"] == int(c["split_fold"]), ["slide_id", "split"]].itertuples(index=False))
    labels_cfg = TileLabelConfig.from_dict(c["labels"])
    class_names = list(labels_cfg.class_names)
    store = SlideStore(project_path(p["tile"]["tiles_dir"]), project_path(p["features"]["out_dir"]),
                       {STAINS: project_path(p["stains"]["out_dir"])})
    labels_dir, out_dir = project_path(c["labels_dir"]), project_path(c["out_dir"])
    for folder in (labels_dir, out_dir / "geojson"):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(folder)
    column = f"abs_{c['annotation_column']}"
    method_cls = get_method("class_m")
    method = method_cls(method_cls.resolve_config(c["model"], n_classes=len(class_names), feature_dims={}))
    px = method.config.input_px

    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    counts: dict[str, dict[str, int]] = {}
    for row in manifest.itertuples(index=False):
        sid = str(row.slide_id)
        split = split_of[sid]
        tiles = store.tile_set(sid)
        annotation = getattr(row, column, "")
        fc = json.loads(Path(annotation).read_text()) if annotation else {"type": "FeatureCollection", "features": []}
        cfg = TileLabelConfig.from_dict({**labels_cfg.to_dict(), "seed": labels_cfg.seed + len(counts)})
        labels = make_tile_labels(tiles.coords, tiles.geometry.level0_px, fc, cfg, source=annotation or sid)
        write_tile_labels(labels_dir / f"{sid}.h5", labels, config=cfg, source=annotation, tiles_digest=tiles_digest(tiles))
        rows = sampled_tiles(len(tiles), int(c["max_train_tiles"])) if split == "train" else None
        tiles, rgb, matrix = slide_tiles(store, sid, px, rows)
        picked = np.arange(len(tiles)) if rows is None else rows
        y = labels.training_labels()[picked] if split == "train" else labels.class_index[picked]
        parts[split].append((sid, tiles, picked, rgb, y, matrix))
        counts[sid] = {"split": split, "tiles": len(tiles), "read": int(picked.size),
                       "labelled": int((y >= 0).sum()) if split == "train" else 0}
    read_s = time.perf_counter() - t0

    def data(split: str) -> TileData:
        items = parts[split]
        return TileData(np.concatenate([it[3] for it in items]), np.concatenate([it[4] for it in items]),
                        [it[5] for it in items for _ in range(it[3].shape[0])],
                        np.concatenate([np.full(it[3].shape[0], it[0]) for it in items]))

    setup_tracking(project_path("."), str(c["experiment"]))
    logger = run_log()
    with logger.run("class_m", tags={"stage": "classm"}) as run_id:
        res = train_tiles(method, data("train"), data("val"), class_names, test=data("test"), seed=int(c["seed"]),
                          on_epoch=lambda e, row: log.info("epoch %d: %s", e, {k: round(v, 4) for k, v in row.items()}))
        log_tile_fit(logger, res, class_names, {"method": "class_m", **method.config.to_dict()})
    spec = BundleSpec(method="class_m", method_config=method.config.to_dict(), class_names=class_names,
                      components={"encoders": {}, "stain_fitter": {"name": "macenko_per_slide", **p["stains"]["fit"]}},
                      tile_sets=["tiles"], tiling=dict(p["tiling"]), metadata={"mlflow_run_id": run_id})
    ModelBundle(spec, res.state_dict).save(out_dir / "bundle")
    model = method.build_model()
    model.load_state_dict(res.state_dict)
    model.eval()
    for sid, tiles, picked, rgb, _, matrix in parts["test"]:
        probs = method.tile_probabilities(model, rgb, [matrix] * rgb.shape[0])
        write_geojson(out_dir / "geojson" / f"{sid}.geojson",
                      class_map_geojson(tiles.coords[picked], tiles.geometry.level0_px, probs, class_names, sid))
    write_json_atomic(project_path(c["metrics"]), {
        "class_names": class_names, "best_epoch": res.best_epoch, "val": res.val, "test": res.test,
        "test_confusion": res.test_confusion, "slides": counts, "mlflow_run_id": run_id,
        "seconds": {"read": round(read_s, 1), "train": round(res.wall_s, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    })
    log.info("class_m: test balanced accuracy %.3f (val %.3f at epoch %d), %.0f s",
             res.test.get("balanced_accuracy", float("nan")), res.val["balanced_accuracy"], res.best_epoch,
             time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
