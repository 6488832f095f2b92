"""DVC stage `heatmaps`: score-layer heatmaps, top-k tiles, QuPath GeoJSON and a machine-readable record for
every test slide, for the painted family (``heatmaps.model``) and, under ``<slide>/models/<family>/``, for
every family in ``heatmaps.models`` (all trained families when empty) so the dashboard can show any of them.

Each slide is explained by the model of the first fold in which it was a *test* slide, so a heatmap never
shows a model its own training data. Any method works (pooling models paint tile contributions). On slides
with a ground-truth tumour mask (the demo), the primary score layer is scored against it: localisation AUROC
per slide, mean over slides in the metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
    families = list(dict.fromkeys([family, *(h.get("models") or p["train"]["models"])]))
    painted = _painted_families(family, families, h.get("png_models"))
    params = HeatmapParams(**h["render"])
    inputs = training_inputs(p)
    manifest = inputs.slides.set_index("slide_id")
    splits = pd.read_csv(project_path(p["train"]["splits_out"]))
    first_test = splits[splits.split == "test"].sort_values("fold").drop_duplicates("slide_id")
    train_root = project_path(p["train"]["out_dir"])
    out_root = project_path(h["out_dir"])
    store = SlideStore(project_path(p["tile"]["tiles_dir"]), project_path(p["features"]["out_dir"]))
    tissue_dir = project_path(p["tile"]["tissue_dir"])
    scorers: dict[tuple[str, int], BundleScorer] = {}
    rows = []
    for r in tqdm(list(first_test.itertuples()), desc="heatmaps", unit="slide"):
        fold = int(r.fold)
        for fam in families:
            if (fam, fold) not in scorers:
                scorers[fam, fold] = BundleScorer(ModelBundle.load(train_root / fam / "folds" / f"fold{fold}" / "bundle"))
        slide = inputs.source.load(r.slide_id)
        scored_by = {fam: scorers[fam, fold].score(slide) for fam in families}
        scored = scored_by[family]
        layer = scored.primary
        view = scored.tile_sets[layer.tile_set]
        tiles = store.tile_set(r.slide_id, layer.tile_set)
        out = out_root / r.slide_id
        out.mkdir(parents=True, exist_ok=True)
        truth = _copy_ground_truth(manifest.loc[r.slide_id], out)
        with open_slide(tiles.slide_path, slide_id=r.slide_id, mpp=tiles.geometry.slide_mpp) as reader:
            thumb, ds = reader.thumbnail(max_side=params.canvas_max_side)
            tissue = rasterize_polygons(json.loads((tissue_dir / f"{r.slide_id}.geojson").read_text()),
                                        thumb.shape[:2], ds)
            dims = reader.dimensions
            for fam, sc in scored_by.items():
                if fam not in painted:
                    continue
                la = sc.primary
                v = sc.tile_sets[la.tile_set]
                image = render_score_layer(thumb, ds, la, v.coords, v.level0_px, params, tissue_mask=tissue,
                                           mask_downsample=ds, slide_dims=dims, model=f"{fam} fold {fold}",
                                           title=f"{r.slide_id} | {fam} fold {fold} | {sc.label}: {la.name}")
                write_png_atomic(out / "models" / fam / "heatmap.png", image)
                if fam == family:
                    write_png_atomic(out / "heatmap.png", image)
            write_png_atomic(out / "thumbnail.png", thumb)
            top = save_top_tiles(reader, view.coords, tiles.geometry, layer.values, h["top_k"], out / "top_tiles",
                                 r.slide_id)
        write_geojson(out / "tiles.geojson", scored_tiles_geojson(scored, layer.tile_set))
        for fam, sc in scored_by.items():
            record = {**sc.record(h["top_k"]), "fold": fold, "family": fam,
                      "true_label": manifest.at[r.slide_id, "label"], "slide_width": dims[0], "slide_height": dims[1],
                      "thumb_downsample": ds, "slide_path": str(tiles.slide_path), "ground_truth": truth}
            seg = segments_entry(slide, scorers[fam, fold].method, p.get("segment", {}).get("segmenter"))
            if seg is not None:
                record["segments"] = seg
            write_json_atomic(out / "models" / fam / "record.json", record)
            if fam == family:
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
    log.info("%d heatmaps (%s); localisation AUROC %s over %d tumour slides", len(index), ", ".join(families),
             metrics[family]["localisation_auroc"]["mean"], len(loc))
    return 0


def segments_entry(slide, method, segmenter: str | None) -> dict | None:
    """The slide's tile -> smallest-segment memberships for a family whose method reads the ``segments`` layer
    (SAM-MIL), so the dashboard can draw them beside its heatmap; None for other methods. ``segmenter`` is the
    id as configured (kmeans / slic / sam:...), shown as is so a k-means run is never called SAM."""
    if not any(spec.kind == "segments" for spec in getattr(method, "required_layers", ())):
        return None
    seg = slide.layers.get("segments")
    if seg is None:
        return None
    return {"segmenter": str(segmenter or "unknown"), "tile_set": "tiles",
            "group": seg.smallest_group().astype(int).tolist(), "group_area": seg.group_area.tolist(),
            "unsegmented": int(seg.unsegmented), "n_segments": int(seg.n_segments)}


def _painted_families(family: str, families: list[str], png_models: list[str] | None) -> list[str]:
    """Families that get a rendered heatmap PNG: the painted family plus ``heatmaps.png_models`` (None = every
    family). Rendering a thumbnail-sized overlay is most of the stage's time, while the dashboard's viewer draws
    any family from its record.json, so the demo paints one and records all."""
    if png_models is None:
        return families
    unknown = sorted(set(png_models) - set(families))
    if unknown:
        raise ValueError(f"heatmaps.png_models names {unknown}, which are not among the explained families "
                         f"{families} (heatmaps.model + heatmaps.models or train.models)")
    return [f for f in families if f == family or f in png_models]


def _copy_ground_truth(row: pd.Series, out) -> str | None:
    """Copy the slide's ground-truth GeoJSON (level-0 polygons) next to its heatmaps, so the dashboard can draw
    it without the manifest; returns the file name, or None without ground truth."""
    src = row.get("abs_tumour_geojson")
    if not isinstance(src, str) or not src:
        return None
    write_json_atomic(out / "ground_truth.geojson", json.loads(Path(src).read_text()))
    return "ground_truth.geojson"


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
