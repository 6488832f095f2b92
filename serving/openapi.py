"""The OpenAPI document BentoML generates, completed: title, description, version, GET probes, 4xx answers.

BentoML 1.4 titles the document with the service name, takes the description from a default README text and
documents only 200 (and generic 400/404/500) answers; :func:`describe_api` is applied to ``/docs.json`` by
:mod:`serving.gate`.
"""

from __future__ import annotations

from typing import Any

from serving.schemas import ErrorResponse
from serving.settings import ServingSettings

TITLE = "SlideMIL: whole-slide image classification"
DESCRIPTION = """\
Upload a whole-slide image (.svs, .tif/.tiff, .ndpi, single-file DICOM WSI, or a PNG/JPEG with `mpp`) and get the
registered champion model's diagnosis: class probabilities, an attention heatmap (PNG), the top tiles and a
QuPath-readable GeoJSON of every tile with its scores.

* `POST /predict` answers when the prediction is done (seconds per slide on a CPU); past the server's
  concurrency it answers 429 with `Retry-After`.
* Long or many slides: `POST /predict_job/submit` answers a `task_id` at once; poll
  `GET /predict_job/status?task_id=...` and fetch `GET /predict_job/get?task_id=...`.
* `POST /predict_features` scores a precomputed HDF5 feature bag.
* `GET /health`, `GET /metadata` (also POST): probes and what is served; `/readyz`, `/livez`: BentoML's probes.

Every refusal is JSON `{"error": "<message naming the file>", "code": "<code>"}`.
"""

#: route -> (status, codes) documented for it
_SLIDE_ERRORS = {
    400: "bad_mpp, bad_top_k, empty_file, not_a_file, not_an_upload, invalid_request, bad_content_length, "
         "bad_multipart",
    408: "upload_timeout (no upload data for SLIDEMIL_UPLOAD_TIMEOUT_S)",
    411: "length_required (uploads need a Content-Length)",
    413: "too_large (over SLIDEMIL_MAX_UPLOAD_MB)",
    415: "unsupported_format (extension not accepted or content not what it claims), unsupported_media_type",
    422: "missing_mpp, no_tissue, truncated_slide, corrupt_slide, unreadable_slide",
    503: "timed_out (the work was cancelled; Retry-After), cancelled",
}
_ERRORS = {
    "/predict": {**_SLIDE_ERRORS, 429: "busy (past SLIDEMIL_MAX_CONCURRENCY requests in flight; Retry-After)"},
    "/predict_job/submit": {
        **{k: v for k, v in _SLIDE_ERRORS.items() if k not in (422, 503)},
        429: "queue_full (past SLIDEMIL_MAX_JOBS jobs or SLIDEMIL_MAX_QUEUED_MB queued; Retry-After)",
    },
    "/predict_job/get": {
        **{k: v for k, v in _SLIDE_ERRORS.items() if k in (400, 422, 503)},
        404: "task_id not found",
        410: "job_upload_gone (a retried job whose upload is gone)",
    },
    "/predict_job": {405: "submit_jobs (call /predict_job/submit)"},
    "/predict_features": {
        400: "bad_feature_file, encoder_mismatch, empty_file, not_a_file, invalid_request",
        408: _SLIDE_ERRORS[408], 411: _SLIDE_ERRORS[411], 413: _SLIDE_ERRORS[413],
        415: "unsupported_format, unsupported_media_type",
        429: "busy (past SLIDEMIL_MAX_CONCURRENCY requests in flight; Retry-After)",
    },
}


def _error_ref() -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


def describe_api(spec: dict[str, Any], settings: ServingSettings, version: str) -> dict[str, Any]:
    """``spec`` (BentoML's OpenAPI dict) with our title, description, version, error answers and GET probes."""
    spec["info"] = {
        "title": TITLE,
        "description": DESCRIPTION,
        "version": version,
        "x-model": {"name": settings.model_name, "alias": settings.model_alias},
    }
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorResponse"] = ErrorResponse.model_json_schema()
    paths = spec.get("paths", {})
    for route, errors in _ERRORS.items():
        for op in paths.get(route, {}).values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses = {k: v for k, v in op["responses"].items() if str(k).startswith("2")}
            for status, codes in sorted(errors.items()):
                responses[str(status)] = {"description": f"code: {codes}", "content": _error_ref()}
            responses["500"] = {"description": "code: internal_error (with a reference to the server log)",
                                "content": _error_ref()}
            op["responses"] = responses
    for route in ("/health", "/metadata"):
        item = paths.get(route)
        if item and "post" in item:
            get = {k: v for k, v in item["post"].items() if k != "requestBody"}
            get["operationId"] = f"{get.get('operationId', route.strip('/'))}__get"
            item["get"] = get
    return spec
