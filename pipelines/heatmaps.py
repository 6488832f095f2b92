"""DVC stage `heatmaps`: score-layer heatmaps, top-k tiles, QuPath GeoJSON and a machine-readable record for
every test slide.

Each slide is explained by the model of the first fold in which it was a *test* slide, so a heatmap never
shows a model its own training data. Any method works (pooling models paint tile contributions). On slides
with a ground-truth tumour mask (the demo), the primary score layer is scored against it: localisation AUROC
per slide, mean over slides in the metrics.
"""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipelines.common import load_params, project_path, setup_logging
from pipelines.training_inputs import training_inputs
from slidemil.bundle import ModelBundle
from slidemil.evaluation.heatmap import HeatmapParams, render_score_layer, save_top_tiles
from slidemil.evaluation.localisation import localisation_auroc, tile_tumour_fraction
from slidemil.evaluation.tile_geojson import scored_tiles_geojson
from slidemil.scoring import BundleScorer, ScoredSlide
from slidemil.slides.backends import open_slide
from slidemil.slides.masks import rasterize_polygons
from slidemil.store import SlideStore
from slidemil.utils.atomic import atomic_path, write_json_atomic, write_png_atomic
from slidemil.utils.geojson import write_geojson


def main() -> int:
    log = setup_logging("heatmaps")
    p = load_params()
    h = p["heatmaps"]
    family = h["model"]
    params = HeatmapParams(**h["render"])
    inputs = training_inputs(p)
    manifest = inputs.slides.set_index("slide_id")
    splits = pd.read_csv(project_path(p["train"]["splits_out"]))
    first_test = splits[splits.split == "test"].sort_values("fold").drop_duplicates("slide_id")
    train_dir = project_path(p["train"]["out_dir"]) / family
    out_root = project_path(h["out_dir"])
    store = SlideStore(project_path(p["tile"]["tiles_dir"]), project_path(p["features"]["out_dir"]))
    tissue_dir = project_path(p["tile"]["tissue_dir"])
    scorers: dict[int, BundleScorer] = {}
    rows = []
    for r in tqdm(list(first_test.itertuples()), desc="heatmaps", unit="slide"):
        fold = int(r.fold)
        if fold not in scorers:
            scorers[fold] = BundleScorer(ModelBundle.load(train_dir / "folds" / f"fold{fold}" / "bundle"))
        scored = scorers[fold].score(inputs.source.load(r.slide_id))
        layer = scored.primary
        view = scored.tile_sets[layer.tile_set]
        tiles = store.tile_set(r.slide_id, layer.tile_set)
        out = out_root / r.slide_id
        out.mkdir(parents=True, exist_ok=True)
        with open_slide(tiles.slide_path, slide_id=r.slide_id, mpp=tiles.geometry.slide_mpp) as reader:
            thumb, ds = reader.thumbnail(max_side=params.canvas_max_side)
            tissue = rasterize_polygons(json.loads((tissue_dir / f"{r.slide_id}.geojson").read_text()),
                                        thumb.shape[:2], ds)
            image = render_score_layer(thumb, ds, layer, view.coords, view.level0_px, params,
                                       tissue_mask=tissue, mask_downsample=ds, slide_dims=reader.dimensions,
                                       title=f"{r.slide_id} | {family} fold {fold} | {scored.label}: {layer.name}")
            write_png_atomic(out / "heatmap.png", image)
            write_png_atomic(out / "thumbnail.png", thumb)
            top = save_top_tiles(reader, view.coords, tiles.geometry, layer.values, h["top_k"], out / "top_tiles",
                                 r.slide_id)
            dims = reader.dimensions
        write_geojson(out / "tiles.geojson", scored_tiles_geojson(scored, layer.tile_set))
        record = {**scored.record(h["top_k"]), "fold": fold, "family": family,
                  "true_label": manifest.at[r.slide_id, "label"], "slide_width": dims[0], "slide_height": dims[1], "thumb_downsample": ds}
        write_json_atomic(out / "record.json", record)
        rows.append(_index_row(r.slide_id, fold, manifest.at[r.slide_id, "label"], scored, len(top), dims, ds,
                               _localisation(manifest.loc[r.slide_id], view.coords, view.level0_px, layer.values)))
    index = pd.DataFrame(rows)
    with atomic_path(out_root / "index.csv") as tmp:
        index.to_csv(tmp, index=False)
    loc = index["localisation_auroc"].dropna()
    metrics = {family: {
        "localisation_auroc": {"mean": round(float(loc.mean()), 4) if len(loc) else None,
                               "std": round(float(loc.std(ddof=1)), 4) if len(loc) > 1 else None,
                               "n_slides": int(len(loc))},
        "n_heatmaps": int(len(index)),
    }}
    write_json_atomic(project_path(h["metrics"]), metrics)
    log.info("%d heatmaps; localisation AUROC %s over %d tumour slides", len(index),
             metrics[family]["localisation_auroc"]["mean"], len(loc))
    return 0


def _index_row(slide_id: str, fold: int, label: str, scored: ScoredSlide, n_top: int, dims: tuple[int, int],
               ds: float, auroc: float | None) -> dict:
    return {"slide_id": slide_id, "fold": fold, "label": label, "pred": scored.label,
            **{f"prob_{c}": v for c, v in scored.probabilities.items()},
            "n_tiles": len(scored.tile_sets["tiles"]), "top_tiles": n_top, "score_layer": scored.primary.name,
            "score_kind": scored.primary.kind, "slide_width": dims[0], "slide_height": dims[1],
            "thumb_downsample": ds, "localisation_auroc": auroc}


def _localisation(row: pd.Series, coords: np.ndarray, level0_px: int, scores: np.ndarray) -> float | None:
    """AUROC of the tile scores vs the ground-truth tumour mask (None without ground truth or tumour)."""
    mask_path = row.get("abs_tumour_mask")
    if not isinstance(mask_path, str) or not mask_path:
        return None
    mask = cv2.imread(mask_path, cv2.IMREAD_GRAYSCALE)
    if mask is None or not mask.any():
        return None
    fractions = tile_tumour_fraction(coords, level0_px, mask > 127, float(row["mask_downsample"]))
    return localisation_auroc(scores, fractions)


if __name__ == "__main__":
    sys.exit(main())
