"""What the train and tune stages share: the cohort, where each slide's layers come from, the feature sizes,
each method's params.yaml section, and the bundle context (encoders, tiling, tissue, heatmap settings)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipelines.common import project_path
from slidemil.data.manifest import read_manifest
from slidemil.methods import LayerSpec, get_method
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


#: the params.yaml section (stage) whose ``out_dir`` holds each further layer kind
LAYER_STAGES = {"segments": "segment"}


def methods_in_use(p: dict) -> list[str]:
    """Every method the train, tune and heatmaps stages may build ("tuned" is one of the tune candidates)."""
    named = [*p["train"]["models"], *p["tune"]["space"]["methods"], p["heatmaps"]["model"]]
    return list(dict.fromkeys(m for m in named if m != "tuned"))


def extra_layers(p: dict) -> list[LayerSpec]:
    """Store layers beyond tile sets and features that some method in use requires (``segments`` for
    SAM-MIL); none for the demo's methods, so the demo never waits on a segmenter it does not use."""
    specs = [s for m in methods_in_use(p) for s in get_method(m).required_layers
             if s.kind not in ("tile_set", "features")]
    return list(dict.fromkeys(specs))


def training_inputs(p: dict) -> TrainingInputs:
    """Every tile set the features stage encoded (``features.tile_sets``) is loaded and recorded in bundles,
    so methods that read parents find them; the ``tiles`` set is always there."""
    classes = list(p["data"]["classes"])
    feat_dir = project_path(p["features"]["out_dir"])
    slides = read_manifest(project_path(p["validate"]["manifest_out"]))
    extra = extra_layers(p)
    store = SlideStore(project_path(p["tile"]["tiles_dir"]), feat_dir,
                       {spec.kind: project_path(p[LAYER_STAGES[spec.kind]]["out_dir"]) for spec in extra})
    tile_sets = list(dict.fromkeys(["tiles", *p["features"].get("tile_sets", ["tiles"])]))
    first_slide = str(slides["slide_id"].iloc[0])
    layers = {ts: store.features(first_slide, ts) for ts in tile_sets}
    attrs = layers["tiles"].attrs
    feature_dims = {ts: layer.feature_dim for ts, layer in layers.items()}
    enc = p["features"]["encoder"]
    encoder = {"role": "frozen", "name": enc["name"], "weights": str(enc["weights"]), "seed": int(enc.get("seed", 0)),
               "weights_id": attrs.get("weights_id")}
    components: dict = {"encoders": {ts: {**encoder, "feature_dim": d} for ts, d in feature_dims.items()}}
    if any(spec.kind == "segments" for spec in extra):
        seg = p["segment"]
        components["segmenter"] = {"id": seg["segmenter"],
                                   "settings": dict(seg.get(seg["segmenter"].partition(":")[0], {}))}
    context = {
        "components": components,
        "tile_sets": tile_sets,
        "tiling": {k: v for k, v in p["tiling"].items() if k != "workers"},
        "tissue": dict(p["tissue"]["params"]),
        "heatmap": dict(p["heatmaps"]["render"]),
    }
    return TrainingInputs(slides, classes, store_source(store, tile_sets, extra), feature_dims, attrs, context)
