"""What the train and tune stages share: the cohort, where each slide's layers come from, the feature sizes,
each method's params.yaml section, and the bundle context (encoders, tiling, tissue, heatmap settings)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipelines.common import project_path
from slidemil.data.manifest import read_manifest
from slidemil.store import SlideStore
from slidemil.training.data import CachedSource, store_source


@dataclass
class TrainingInputs:
    slides: pd.DataFrame  # slide_id, case_id, label, ...
    classes: list[str]
    source: CachedSource
    feature_dims: dict[str, int]
    feature_attrs: dict
    bundle_context: dict


def training_inputs(p: dict) -> TrainingInputs:
    classes = list(p["data"]["classes"])
    feat_dir = project_path(p["features"]["out_dir"])
    slides = read_manifest(project_path(p["validate"]["manifest_out"]))
    store = SlideStore(project_path(p["tile"]["tiles_dir"]), feat_dir)
    first = store.features(str(slides["slide_id"].iloc[0]))
    attrs = first.attrs
    feature_dims = {"tiles": first.feature_dim}
    enc = p["features"]["encoder"]
    context = {
        "components": {"encoders": {"tiles": {
            "role": "frozen", "name": enc["name"], "weights": str(enc["weights"]), "seed": int(enc.get("seed", 0)),
            "weights_id": attrs.get("weights_id"), "feature_dim": feature_dims["tiles"]}}},
        "tile_sets": ["tiles"],
        "tiling": {k: v for k, v in p["tiling"].items() if k != "workers"},
        "tissue": dict(p["tissue"]["params"]),
        "heatmap": dict(p["heatmaps"]["render"]),
    }
    return TrainingInputs(slides, classes, store_source(store), feature_dims, attrs, context)
