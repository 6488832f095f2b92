"""BentoML service ``SlideMIL``: the registered champion bundle behind HTTP.

Start (from the project root): ``bentoml serve serving.service:SlideMIL``. At start-up the worker loads the
bundle that holds ``SLIDEMIL_MODEL_ALIAS`` (default ``champion``) of ``SLIDEMIL_MODEL_NAME`` from the MLflow
registry (``MLFLOW_TRACKING_URI``, default the project's ``mlflow.db``) and builds one
:class:`~slidemil.inference.SlidePredictor`; nothing else is read from disk afterwards except uploads.

Endpoints (JSON out): ``predict`` (multipart slide upload, answered when done), ``predict_job`` (the same as a
BentoML task: ``/predict_job/submit`` answers a task id at once, ``/predict_job/status`` and ``/predict_job/get``
follow it), ``predict_features`` (multipart HDF5 bag of tile features), ``health`` and ``metadata`` (POST or GET).

Concurrency: every prediction of a worker runs on its one model thread (:mod:`serving.runner`), synchronous
requests ahead of jobs; endpoints are async, so ``health``/``metadata`` answer during inference. Admission
(429 + ``Retry-After``), upload reading and job spooling happen before BentoML, in :mod:`serving.gate`.
Scale out with ``SLIDEMIL_WORKERS`` (each worker holds its own model copy and its own queue).

Errors are answered as ``{"error": message, "code": code}`` with the status set through the request context,
not by raising ``BentoMLException``: BentoML 1.4.39 wraps the body of a raised 4xx error in a list.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from pydantic import Field
from starlette.responses import JSONResponse

from serving.gate import Gate
from serving.jobs import JobQueue
from serving.logs import quiet_client_errors
from serving.openapi import describe_api
from serving.runner import INTERACTIVE, JOB, ModelRunner, PredictionCancelled, WorkTimedOut
from serving.schemas import FeaturePredictionResponse, HealthResponse, MetadataResponse, PredictionResponse
from serving.settings import FEATURE_SUFFIXES, SLIDE_SUFFIXES, ServingSettings
from serving.uploads import ServingError, install_strict_multipart, stashed_upload
from slidemil import __version__
from slidemil.utils.jsonable import to_jsonable

SETTINGS = ServingSettings.from_env()
log = logging.getLogger("bentoml.slidemil")

install_strict_multipart()
quiet_client_errors()
JOBS = JobQueue(SETTINGS.spool_dir, SETTINGS.max_jobs, SETTINGS.max_queued_bytes)
_RUNNER: ModelRunner | None = None
_RUNNER_LOCK = threading.Lock()


def runner() -> ModelRunner:
    """The worker's model thread, started on first use (not in the arbiter, which imports this module too)."""
    global _RUNNER
    with _RUNNER_LOCK:
        if _RUNNER is None:
            _RUNNER = ModelRunner()
        return _RUNNER


SlideField = Annotated[Path, Field(description="the slide: .svs, .tif/.tiff, .ndpi, .dcm (DICOM WSI), .png or .jpg/.jpeg")]
MppField = Annotated[
    float | None, Field(description="microns per pixel; required when the file has none (plain PNG/JPEG images)")
]
TopKField = Annotated[int, Field(description="how many top-attention tiles to return")]
HeatmapField = Annotated[bool, Field(description="render the heatmap, top tiles and GeoJSON")]


@bentoml.service(
    name="slidemil",
    workers=SETTINGS.workers,
    threads=1,
    traffic={"timeout": SETTINGS.backstop_timeout_s, "max_concurrency": SETTINGS.backstop_concurrency},
)
class SlideMIL:
    """Slide in -> diagnosis, class probabilities, attention heatmap, top tiles and per-tile GeoJSON out."""

    def __init__(self) -> None:
        import mlflow

        from slidemil.inference import SlidePredictor

        mlflow.set_tracking_uri(SETTINGS.tracking_uri)
        t0 = time.perf_counter()
        self.bundle, self.version = _load_champion(SETTINGS.model_name, SETTINGS.model_alias)
        self.predictor = SlidePredictor(self.bundle, device=SETTINGS.device, batch_size=SETTINGS.batch_size)
        self.feature_dim = int(self.bundle.encoder.feature_dim)
        self.runner = runner()
        self._warm_up()
        self.started = time.time()
        self.counts: Counter[str] = Counter()
        log.info(
            "serving %s v%s (@%s) with encoder %s; ready in %.1f s",
            SETTINGS.model_name,
            self.version,
            SETTINGS.model_alias,
            self.bundle.encoder.name,
            time.perf_counter() - t0,
        )

    def _warm_up(self) -> None:
        """One tiny forward pass so the first request does not pay for lazy initialisation."""
        from slidemil.scoring import slide_from_features

        zeros = np.zeros((2, self.feature_dim), np.float32)
        self.predictor.scorer.score(slide_from_features("warm-up", zeros, np.zeros((2, 2), np.int64), 1))

    def __is_ready__(self) -> bool:
        return self.predictor is not None

    # ---- endpoints ------------------------------------------------------------------------------------
    @bentoml.api
    async def predict(
        self,
        slide: SlideField,
        mpp: MppField = None,
        top_k: TopKField = 5,
        heatmap: HeatmapField = True,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> PredictionResponse:
        """Diagnose one slide and answer when done: label, probabilities, attention heatmap (PNG, base64), top
        tiles, GeoJSON. Past SLIDEMIL_MAX_CONCURRENCY requests in flight: 429 with Retry-After (use jobs)."""

        async def run() -> PredictionResponse:
            _check_parameters(mpp, top_k)
            with stashed_upload(slide, SLIDE_SUFFIXES, SETTINGS.max_upload_bytes, "slide") as (path, name):
                return await self._predict_slide(path, name, mpp, top_k, heatmap, priority=INTERACTIVE)

        return await self._answer(ctx, "predict", run)

    @bentoml.task
    async def predict_job(
        self,
        slide: SlideField,
        mpp: MppField = None,
        top_k: TopKField = 5,
        heatmap: HeatmapField = True,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> PredictionResponse:
        """The same prediction as a job: POST /predict_job/submit answers {task_id} at once (429 with Retry-After
        past SLIDEMIL_MAX_JOBS / SLIDEMIL_MAX_QUEUED_MB), GET /predict_job/status?task_id= and
        /predict_job/get?task_id= follow it. Runs after waiting synchronous requests; stopped after
        SLIDEMIL_JOB_TIMEOUT_S."""

        async def run() -> PredictionResponse:
            _check_parameters(mpp, top_k)
            ticket = JOBS.claim(slide)
            assert ticket.path is not None
            return await self._predict_slide(ticket.path, ticket.name, mpp, top_k, heatmap, priority=JOB)

        return await self._answer(ctx, "predict_job", run)

    @bentoml.api
    async def predict_features(
        self,
        features: Annotated[
            Path,
            Field(
                description="HDF5 feature file as the slidemil features stage writes it "
                "(slidemil.store: group `tiles` with `features` (N, d) and `coords` (N, 2))"
            ),
        ],
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> FeaturePredictionResponse:
        """Predict from a bag of precomputed tile features (skips reading the slide and the encoder)."""

        async def run() -> FeaturePredictionResponse:
            families = {s: "hdf5" for s in FEATURE_SUFFIXES}
            with stashed_upload(features, families, SETTINGS.max_upload_bytes, "feature file") as (path, name):
                return await self.runner.run(lambda check: self._score_bag(path, name), priority=INTERACTIVE,
                                             timeout_s=SETTINGS.request_timeout_s)

        return await self._answer(ctx, "predict_features", run)

    @bentoml.api
    async def health(self) -> HealthResponse:
        """Liveness plus what is being served, the queue, and how many requests ended how (answers during
        inference; GET or POST)."""
        r = self.runner
        return HealthResponse(
            status="ok",
            model=self.model_info(),
            uptime_s=round(time.time() - self.started, 1),
            busy=r.busy,
            queue={"interactive_waiting": r.waiting[INTERACTIVE], "jobs_waiting": r.waiting[JOB],
                   **JOBS.describe()},
            requests=dict(self.counts),
        )

    @bentoml.api
    async def metadata(self) -> MetadataResponse:
        """Everything a client needs to interpret results: model, classes, encoder, tiling, limits (GET or POST)."""
        b = self.bundle
        return MetadataResponse(
            model=self.model_info(),
            method=b.method_name,
            classes=list(b.class_names),
            encoder=b.encoder.model_dump(),
            components=b.spec.components.model_dump(),
            tile_sets=list(b.spec.tile_sets),
            tiling=dict(b.spec.tiling),
            tissue=dict(b.spec.tissue),
            provenance=to_jsonable(b.metadata),
            limits=SETTINGS.describe(),
        )

    # ---- helpers --------------------------------------------------------------------------------------
    def model_info(self) -> dict:
        return {"name": SETTINGS.model_name, "version": self.version, "alias": SETTINGS.model_alias}

    async def _predict_slide(self, path: Path, name: str, mpp: float | None, top_k: int, heatmap: bool, *,
                             priority: int) -> PredictionResponse:
        """Run the predictor on the model thread; the slide is named like the pipeline names it (no suffix)."""
        slide_id = Path(name).stem

        def work(check: Callable[[], None]):
            return self.predictor.predict(path, slide_id=slide_id, mpp=mpp, top_k=top_k, heatmap=heatmap,
                                          check=check)

        try:
            if priority == INTERACTIVE:
                pred = await self.runner.run(work, priority=priority, timeout_s=SETTINGS.request_timeout_s)
            else:
                pred = await self.runner.run(work, priority=priority, run_limit_s=SETTINGS.job_timeout_s)
        except (WorkTimedOut, PredictionCancelled):
            raise
        except Exception as exc:
            raise _slide_error(exc, name, private_name=path.name) from exc
        return self._prediction_json(pred, name)

    def _score_bag(self, path: Path, name: str) -> FeaturePredictionResponse:
        from slidemil.scoring import slide_from_features

        feats, coords, attrs = _read_bag(path, name, self.feature_dim, SETTINGS.max_feature_rows)
        expected = self.bundle.encoder.weights_id
        got = attrs.get("weights_id")
        if expected and got and got != expected:
            raise ServingError(
                400,
                "encoder_mismatch",
                f"{name}: features come from encoder weights {got!r}; this model needs {expected!r}",
            )
        slide = slide_from_features(Path(name).stem, feats, np.zeros((len(feats), 2), np.int64)
                                    if coords is None else coords, int(attrs.get("level0_px") or 0))
        scored = self.predictor.scorer.score(slide)
        primary = scored.primary
        return FeaturePredictionResponse(
            features=name,
            label=scored.label,
            probabilities=scored.probabilities,
            raw_probabilities=scored.raw_probabilities,
            n_tiles=int(feats.shape[0]),
            tile_scores=None if primary is None else to_jsonable(np.asarray(primary.values)),
            score_layers=[{k: v for k, v in layer.to_dict().items() if k != "values"} for layer in scored.layers],
            coords=None if coords is None else coords.tolist(),
            model=self.model_info(),
        )

    async def _answer(self, ctx: bentoml.Context, what: str, run: Callable[[], Awaitable[Any]]) -> Any:
        """Run an endpoint body; refusals become readable 4xx answers, surprises a logged 500."""
        try:
            out = await run()
            self.counts["ok"] += 1
            return out
        except ServingError as exc:
            self.counts[exc.code] += 1
            log.info("%s refused (%d %s): %s", what, exc.status, exc.code, exc.message)
            return _json(ctx, exc.status, exc.body())
        except WorkTimedOut as exc:
            self.counts["timed_out"] += 1
            log.warning("%s %s; the work was cancelled", what, exc)
            return _json(ctx, 503, {"error": f"{what}: {exc}; the work was cancelled", "code": "timed_out"},
                         retry_after=self.runner.retry_after_s(1))
        except PredictionCancelled:
            self.counts["cancelled"] += 1
            log.info("%s cancelled (the client or the server gave up)", what)
            return _json(ctx, 503, {"error": f"{what}: cancelled", "code": "cancelled"})
        except Exception:
            ref = uuid.uuid4().hex[:8]
            self.counts["internal_error"] += 1
            log.exception("%s failed unexpectedly [ref %s]", what, ref)
            return _json(ctx, 500, {
                "error": f"internal error in {what} (reference {ref}; see the server log)",
                "code": "internal_error",
            })

    def _prediction_json(self, pred: Any, name: str) -> PredictionResponse:
        def b64(data: bytes | None) -> str | None:
            return None if data is None else base64.b64encode(data).decode("ascii")

        return PredictionResponse(
            slide=name,
            slide_id=pred.slide_id,
            label=pred.label,
            probabilities=pred.probabilities,
            raw_probabilities=pred.scored.raw_probabilities,
            n_tiles=int(pred.n_tiles),
            tile_px_level0=int(pred.level0_px),
            score_layer=pred.summary()["score_layer"],
            top_tiles=[
                {
                    "rank": int(t["rank"]),
                    "x": int(t["x"]),
                    "y": int(t["y"]),
                    "score": to_jsonable(t["score"]),
                    "png_base64": b64(t.get("png")),
                }
                for t in pred.top_tiles
            ],
            heatmap_png_base64=b64(pred.heatmap_png),
            geojson=to_jsonable(pred.geojson),
            timings_s={k: round(float(v), 3) for k, v in pred.timings.items()},
            model=self.model_info(),
        )


SlideMIL.add_asgi_middleware(
    Gate,
    max_bytes=SETTINGS.max_upload_bytes,
    upload_timeout_s=SETTINGS.upload_timeout_s,
    max_concurrency=SETTINGS.max_concurrency,
    sync_paths=("/predict", "/predict_features"),
    job_paths={"/predict_job/submit": "/predict_job"},
    probe_paths=("/health", "/metadata"),
    jobs=JOBS,
    runner=runner,
    slide_families=SLIDE_SUFFIXES,
    openapi=lambda spec: describe_api(spec, SETTINGS, __version__),
)


def _json(ctx: bentoml.Context, status: int, body: dict, retry_after: int | None = None) -> JSONResponse:
    """An error answer; the status goes through the context too (BentoML copies it onto the response)."""
    ctx.response.status_code = status
    if retry_after is not None:
        ctx.response.headers["Retry-After"] = str(retry_after)
    return JSONResponse(body, status_code=status)


def _check_parameters(mpp: float | None, top_k: int) -> None:
    if mpp is not None and not (math.isfinite(mpp) and 0.01 <= mpp <= 100):
        raise ServingError(400, "bad_mpp", f"mpp must be a pixel size in micrometres (0.01-100), got {mpp}")
    if not 0 <= top_k <= SETTINGS.max_top_k:
        raise ServingError(400, "bad_top_k", f"top_k must be between 0 and {SETTINGS.max_top_k}, got {top_k}")


def _load_champion(model_name: str, alias: str):
    """The bundle holding ``alias`` and its version (re-read if the alias moved while loading)."""
    from slidemil.registry import champion_version, load_bundle

    for _ in range(3):
        before = champion_version(model_name, alias)
        bundle = load_bundle(model_name, alias)
        after = champion_version(model_name, alias)
        if before is not None and after is not None and before.version == after.version:
            return bundle, str(after.version)
    raise RuntimeError(f"alias {alias!r} of {model_name!r} kept moving while loading; try again")


def _slide_error(exc: Exception, name: str, private_name: str) -> Exception:
    """Slide problems -> client errors that name the client's file; anything else is left to become a 500."""
    from slidemil.slides.errors import (
        CorruptSlideError,
        MissingMppError,
        NoTissueError,
        SlideError,
        TruncatedSlideError,
        UnsupportedFormatError,
    )

    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, SlideError):  # readers name the file they opened: the server's private name
        exc.problem = exc.problem.replace(private_name, name)
    if isinstance(exc, MissingMppError):
        return ServingError(
            422,
            "missing_mpp",
            f"{name}: the file has no microns-per-pixel (mpp) metadata; "
            "pass the pixel size as the form field `mpp` "
            "(for example mpp=0.5 for a 20x scan)",
        )
    if isinstance(exc, UnsupportedFormatError):
        return ServingError(415, "unsupported_format", f"{name}: {exc.problem}")
    if isinstance(exc, TruncatedSlideError):
        return ServingError(422, "truncated_slide", f"{name}: {exc.problem}")
    if isinstance(exc, CorruptSlideError):
        return ServingError(422, "corrupt_slide", f"{name}: {exc.problem}")
    if isinstance(exc, NoTissueError):
        return ServingError(422, "no_tissue", f"{name}: {exc.problem}")
    if isinstance(exc, SlideError):
        return ServingError(422, "unreadable_slide", f"{name}: {exc.problem}")
    return exc


def _read_bag(path: Path, name: str, feature_dim: int, max_rows: int):
    """``(features float32 (N, d), coords (N, 2), attrs)`` of the ``tiles`` set of an uploaded feature file.

    Read by the store's one reader, which refuses what serving must refuse: links, virtual and external
    datasets (they would make the server read paths chosen by the client), unfinished files, other formats,
    NaN/inf and, checked before loading, more than ``max_rows`` rows. Problems are reported under the
    client's file name, never the server's temporary path.
    """
    from slidemil.store import LayerError, LayerTooLarge, read_feature_layer

    try:
        layer = read_feature_layer(path, max_rows=max_rows)
    except LayerTooLarge as exc:
        raise ServingError(400, "bad_feature_file",
                           f"{name}: {exc.problem} (server setting SLIDEMIL_MAX_FEATURE_ROWS)") from None
    except LayerError as exc:
        raise ServingError(400, "bad_feature_file", f"{name}: {exc.problem}") from None
    if layer.feature_dim != feature_dim:
        raise ServingError(400, "bad_feature_file", f"{name}: features have dimension {layer.feature_dim}, "
                           f"but this model expects {feature_dim}")
    if len(layer) == 0:
        raise ServingError(400, "bad_feature_file", f"{name}: the feature file holds no tiles")
    return layer.features, layer.coords, {k: to_jsonable(v) for k, v in layer.attrs.items()}
