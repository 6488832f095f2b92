"""Stable short hashes of settings, the resume keys of stages that skip work already done."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict


def config_hash(*parts: object) -> str:
    """Stable short hash of the settings that determine a stage's output (for skip-if-done)."""
    blob = json.dumps(
        [asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts], sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
