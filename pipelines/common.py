"""Shared by the stage scripts: read params.yaml, set up logging, resolve paths from the project root."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_params(path: str | Path | None = None) -> dict:
    """Read ``params.yaml`` (or ``$SLIDEMIL_PARAMS``)."""
    path = Path(path or os.environ.get("SLIDEMIL_PARAMS", ROOT / "params.yaml"))
    with open(path) as fh:
        return yaml.safe_load(fh)


def project_path(p: str | Path) -> Path:
    """Paths in params.yaml are relative to the project root (where dvc.yaml lives)."""
    p = Path(p)
    return p if p.is_absolute() else ROOT / p


def setup_logging(stage: str) -> logging.Logger:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{stage}] %(levelname)s %(message)s",
                        stream=sys.stderr)
    # INFO chatter of libraries: Lightning's rank-zero notes ("GPU available: ...", "Tip: try litlogger"); the
    # warnings these loggers carry still show
    for noisy in ("great_expectations", "urllib3", "matplotlib", "PIL", "lightning.pytorch.utilities.rank_zero",
                  "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger(stage)
