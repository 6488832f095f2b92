"""Response models of the service: they type the OpenAPI (``/docs.json``) and carry an example each."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_PROBS = {"normal": 0.08, "subtype_a": 0.87, "subtype_b": 0.05}
_MODEL = {"name": "slidemil-demo", "version": "3", "alias": "champion"}


def _example(example: dict) -> ConfigDict:
    return ConfigDict(json_schema_extra={"example": example})


class ModelInfo(BaseModel):
    """The registered model that answered."""

    name: str
    version: str
    alias: str


class ScoreLayerRef(BaseModel):
    name: str = Field(description="score layer painted and ranked (attention, contribution, probability, ...)")
    kind: str


class TopTile(BaseModel):
    rank: int
    x: int = Field(description="level-0 pixel x of the tile's top-left corner")
    y: int
    score: float | None
    png_base64: str | None = Field(description="the tile as PNG, base64")


class PredictionResponse(BaseModel):
    model_config = _example({
        "slide": "case_003_s0.svs", "slide_id": "case_003_s0", "label": "subtype_a", "probabilities": _PROBS, "raw_probabilities": _PROBS,
        "n_tiles": 57, "tile_px_level0": 224, "score_layer": {"name": "attention", "kind": "attention"},
        "top_tiles": [{"rank": 1, "x": 1344, "y": 672, "score": 0.31, "png_base64": "iVBORw0KGgo..."}],
        "heatmap_png_base64": "iVBORw0KGgo...",
        "geojson": {"type": "FeatureCollection", "features": ["..."]},
        "timings_s": {"segment_and_tile": 0.08, "features": 2.9, "model": 0.002, "heatmap": 1.1, "total": 4.1},
        "model": _MODEL,
    })

    slide: str = Field(description="the uploaded file's name")
    slide_id: str = Field(description="the slide's id as the pipeline names it (file name without extension)")
    label: str = Field(description="predicted class")
    probabilities: dict[str, float] = Field(description="class -> probability (sums to 1), calibrated with the "
                                                        "bundle's temperature")
    raw_probabilities: dict[str, float] = Field(description="the model's own probabilities (before calibration)")
    n_tiles: int
    tile_px_level0: int = Field(description="tile side in level-0 pixels")
    score_layer: ScoreLayerRef | None
    top_tiles: list[TopTile]
    heatmap_png_base64: str | None
    geojson: dict[str, Any] | None = Field(description="QuPath-readable FeatureCollection, one tile per feature")
    timings_s: dict[str, float]
    model: ModelInfo


class ScoreLayerInfo(BaseModel):
    name: str
    tile_set: str
    kind: str
    class_name: str | None
    description: str


class FeaturePredictionResponse(BaseModel):
    model_config = _example({
        "features": "case_003_s0.h5", "label": "subtype_a", "probabilities": _PROBS, "raw_probabilities": _PROBS, "n_tiles": 3,
        "tile_scores": [0.2, 0.5, 0.3],
        "score_layers": [{"name": "attention", "tile_set": "tiles", "kind": "attention", "class_name": "subtype_a",
                          "description": "attention weight of each tile"}],
        "coords": [[0, 0], [224, 0], [448, 0]], "model": _MODEL,
    })

    features: str = Field(description="the uploaded file's name")
    label: str
    probabilities: dict[str, float] = Field(description="calibrated with the bundle's temperature")
    raw_probabilities: dict[str, float] = Field(description="the model's own probabilities")
    n_tiles: int
    tile_scores: list[float | None] | None = Field(description="values of the primary score layer")
    score_layers: list[ScoreLayerInfo]
    coords: list[list[int]] | None
    model: ModelInfo


class HealthResponse(BaseModel):
    model_config = _example({
        "status": "ok", "model": _MODEL, "uptime_s": 812.4, "busy": True,
        "queue": {"interactive_waiting": 0, "jobs_waiting": 12, "jobs": 13, "queued_mb": 19.5},
        "requests": {"ok": 40, "unsupported_format": 2},
    })

    status: str
    model: ModelInfo
    uptime_s: float
    busy: bool = Field(description="a prediction is running")
    queue: dict[str, int | float] = Field(description="waiting synchronous requests and jobs; admitted jobs and their MB")
    requests: dict[str, int] = Field(description="outcome code -> count since start")


class MetadataResponse(BaseModel):
    model_config = _example({
        "model": _MODEL, "method": "clam_sb", "classes": list(_PROBS),
        "encoder": {"role": "tiles", "name": "resnet18", "weights": "random", "feature_dim": 512},
        "components": {}, "tile_sets": ["tiles"], "tiling": {"tile_px": 224, "target_mpp": 0.5}, "tissue": {},
        "provenance": {}, "limits": {"max_upload_mb": 2048, "max_concurrency": 4, "max_jobs": 200},
    })

    model: ModelInfo
    method: str
    classes: list[str]
    encoder: dict[str, Any]
    components: dict[str, Any]
    tile_sets: list[str]
    tiling: dict[str, Any]
    tissue: dict[str, Any]
    provenance: Any
    limits: dict[str, Any]


class ErrorResponse(BaseModel):
    """Every refusal (4xx) and internal error (500) has this body."""

    model_config = _example({"error": "slide.svs: the file was cut short (an interrupted upload?)",
                             "code": "truncated_slide"})

    error: str = Field(description="what went wrong, naming the uploaded file")
    code: str = Field(description="machine-readable reason")
