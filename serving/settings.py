"""Serving settings, read once from the environment (the service decorator needs them at import time).

Every knob an operator may turn without touching code: which registered model to serve, upload and time
limits, the worker layout. Defaults suit the demo on a laptop CPU.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from slidemil.tracking import tracking_uri

PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: suffix -> the file family its first bytes must show (format detection keeps the suffix; see uploads.py)
SLIDE_SUFFIXES = {
    ".svs": "tiff",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".ndpi": "tiff",
    ".dcm": "dicom",  # a single-file DICOM WSI instance (Part 10: 'DICM' after the 128-byte preamble)
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
}
FEATURE_SUFFIXES = (".h5", ".hdf5")


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"environment variable {name} must be > 0, got {value}")
    return value


@dataclass(frozen=True)
class ServingSettings:
    model_name: str
    model_alias: str
    tracking_uri: str
    max_upload_bytes: int
    request_timeout_s: float
    max_concurrency: int
    workers: int
    device: str
    batch_size: int
    max_top_k: int
    max_feature_rows: int
    upload_timeout_s: float
    max_jobs: int
    max_queued_bytes: int
    job_timeout_s: float
    spool_dir: Path

    @property
    def backstop_concurrency(self) -> int:
        """BentoML's own ``max_concurrency``: above every limit of ours (a job's submit request stays open in
        BentoML until the job ends), so its bare 429 without ``Retry-After`` never fires first."""
        return self.max_concurrency + self.max_jobs + 64

    @property
    def backstop_timeout_s(self) -> float:
        """BentoML's ``traffic.timeout`` (a bare 504): later than our own deadline, which cancels the work."""
        return self.request_timeout_s + 30

    @classmethod
    def from_env(cls) -> ServingSettings:
        return cls(
            model_name=os.environ.get("SLIDEMIL_MODEL_NAME", "slidemil-demo"),
            model_alias=os.environ.get("SLIDEMIL_MODEL_ALIAS", "champion"),
            tracking_uri=tracking_uri(PROJECT_ROOT),
            max_upload_bytes=int(_env_float("SLIDEMIL_MAX_UPLOAD_MB", 2048) * 1024 * 1024),
            request_timeout_s=_env_float("SLIDEMIL_REQUEST_TIMEOUT_S", 600),
            max_concurrency=int(_env_float("SLIDEMIL_MAX_CONCURRENCY", 4)),
            workers=int(_env_float("SLIDEMIL_WORKERS", 1)),
            device=os.environ.get("SLIDEMIL_DEVICE", "auto"),
            batch_size=int(_env_float("SLIDEMIL_BATCH_SIZE", 32)),
            max_top_k=int(_env_float("SLIDEMIL_MAX_TOP_K", 50)),
            max_feature_rows=int(_env_float("SLIDEMIL_MAX_FEATURE_ROWS", 2_000_000)),
            upload_timeout_s=_env_float("SLIDEMIL_UPLOAD_TIMEOUT_S", 30),
            max_jobs=int(_env_float("SLIDEMIL_MAX_JOBS", 200)),
            max_queued_bytes=int(_env_float("SLIDEMIL_MAX_QUEUED_MB", 20480) * 1024 * 1024),
            job_timeout_s=_env_float("SLIDEMIL_JOB_TIMEOUT_S", 1800),
            spool_dir=Path(os.environ.get("SLIDEMIL_SPOOL_DIR") or Path(tempfile.gettempdir()) / "slidemil-jobs"),
        )

    def describe(self) -> dict:
        """The limits a client may want to know (no URIs: they can hold credentials)."""
        return {
            "max_upload_mb": round(self.max_upload_bytes / 1024 / 1024, 3),
            "request_timeout_s": self.request_timeout_s,
            "max_concurrency": self.max_concurrency,
            "upload_timeout_s": self.upload_timeout_s,
            "max_jobs": self.max_jobs,
            "max_queued_mb": round(self.max_queued_bytes / 1024 / 1024, 3),
            "job_timeout_s": self.job_timeout_s,
            "max_top_k": self.max_top_k,
            "slide_formats": sorted(SLIDE_SUFFIXES),
            "feature_formats": list(FEATURE_SUFFIXES),
        }
