"""DVC stage `heatmaps`: attention heatmaps, top-k tiles and QuPath GeoJSON for every test slide.

Each slide is explained by the model of the first fold in which it was a *test* slide, so a heatmap never
shows a model its own training data. On slides with a ground-truth tumour mask (the demo), the tile attention
is scored against it: localisation AUROC per slide, mean over slides in the metrics.
"""

from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from pipelines.common import load_params, project_path, setup_logging
from slidemil.bundle import ModelBundle
from slidemil.data.manifest import read_manifest
from slidemil.evaluation.heatmap import HeatmapParams, render_heatmap, save_png, save_top_tiles, with_colorbar
from slidemil.evaluation.localisation import localisation_auroc, tile_tumour_fraction
from slidemil.evaluation.rasterize import rasterize_polygons
from slidemil.evaluation.tile_geojson import tiles_to_geojson, write_geojson
from slidemil.slides.backends import open_slide
from slidemil.store import SlideStore
from slidemil.utils.atomic import atomic_path, write_json_atomic


def main() -> int:
    log = setup_logging("heatmaps")
    p = load_params()
    h = p["heatmaps"]
    model_name = h["model"]
    params = HeatmapParams(**h["render"])
    manifest = read_manifest(project_path(p["validate"]["manifest_out"])).set_index("slide_id")
    splits = pd.read_csv(project_path(p["train"]["splits_out"]))
    first_test = splits[splits.split == "test"].sort_values("fold").drop_duplicates("slide_id")
    train_dir = project_path(p["train"]["out_dir"]) / model_name
    out_root = project_path(h["out_dir"])
    store = SlideStore(project_path(p["tile"]["tiles_dir"]), project_path(p["features"]["out_dir"]))
    tissue_dir = project_path(p["tile"]["tissue_dir"])
    bundles: dict[int, tuple[ModelBundle, object]] = {}
    rows = []
    for r in tqdm(list(first_test.itertuples()), desc="heatmaps", unit="slide"):
        fold = int(r.fold)
        if fold not in bundles:
            b = ModelBundle.load(train_dir / "folds" / f"fold{fold}" / "bundle")
            bundles[fold] = (b, b.build_model())
        bundle, model = bundles[fold]
        tiles = store.tile_set(r.slide_id)
        layer = store.features(r.slide_id)
        feats, coords = layer.features, layer.coords
        pred = bundle.predict_features(feats, model)
        scores = pred["tile_scores"]
        out = out_root / r.slide_id
        out.mkdir(parents=True, exist_ok=True)
        with open_slide(tiles.slide_path, slide_id=r.slide_id, mpp=tiles.geometry.slide_mpp) as reader:
            thumb, ds = reader.thumbnail(max_side=params.canvas_max_side)
            tissue = rasterize_polygons(json.loads((tissue_dir / f"{r.slide_id}.geojson").read_text()),
                                        reader.dimensions, ds)
            result = render_heatmap(thumb, ds, coords, tiles.geometry.level0_px, scores, params,
                                    tissue_mask=tissue, mask_downsample=ds, slide_dims=reader.dimensions)
            save_png(out / "heatmap.png", with_colorbar(result.overlay_rgb, params.cmap))
            save_png(out / "thumbnail.png", thumb)
            top = save_top_tiles(reader, coords, tiles.geometry, scores, h["top_k"], out / "top_tiles", r.slide_id)
        write_geojson(out / "tiles.geojson", tiles_to_geojson(coords, tiles.geometry.level0_px,
                                                              {"attention": scores}, r.slide_id))
        row = {"slide_id": r.slide_id, "fold": fold, "label": manifest.at[r.slide_id, "label"],
               "pred": pred["label"], **{f"prob_{c}": v for c, v in pred["probabilities"].items()},
               "n_tiles": len(coords), "top_tiles": len(top), "slide_width": reader.dimensions[0],
               "slide_height": reader.dimensions[1], "thumb_downsample": ds}
        auroc = _localisation(manifest.loc[r.slide_id], coords, tiles.geometry.level0_px, scores)
        row["localisation_auroc"] = auroc
        rows.append(row)
    index = pd.DataFrame(rows)
    with atomic_path(out_root / "index.csv") as tmp:
        index.to_csv(tmp, index=False)
    loc = index["localisation_auroc"].dropna()
    metrics = {model_name: {
        "localisation_auroc": {"mean": round(float(loc.mean()), 4) if len(loc) else None,
                               "std": round(float(loc.std(ddof=1)), 4) if len(loc) > 1 else None,
                               "n_slides": int(len(loc))},
        "n_heatmaps": int(len(index)),
    }}
    write_json_atomic(project_path(h["metrics"]), metrics)
    log.info("%d heatmaps; localisation AUROC %s over %d tumour slides", len(index),
             metrics[model_name]["localisation_auroc"]["mean"], len(loc))
    return 0


def _localisation(row: pd.Series, coords: np.ndarray, level0_px: int, scores: np.ndarray) -> float | None:
    """AUROC of tile attention vs the ground-truth tumour mask (None without ground truth or tumour)."""
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
