"""Stable short hashes of settings and of source code: the resume keys of stages that skip work already done.

A resume key that holds only settings reports a slide "done" after the code that made it changed, while DVC
(which re-runs the stage because its code deps changed) records the stale output as fresh. Keys therefore
include :func:`code_version` of the producing modules.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Iterable
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path


def config_hash(*parts: object) -> str:
    """Stable short hash of the settings that determine a stage's output (for skip-if-done)."""
    blob = json.dumps(
        [asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts], sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def code_version(modules: Iterable[str]) -> str:
    """Short hash of the source of ``modules`` (a package counts with every ``.py`` file under it); any edit,
    comments included, changes it."""
    return _code_version(tuple(modules))


@lru_cache(maxsize=32)
def _code_version(modules: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in modules:
        for f in _source_files(name):
            h.update(f"{name}:{f.name}\n".encode())
            h.update(f.read_bytes().replace(b"\r\n", b"\n"))
    return h.hexdigest()[:16]


def _source_files(module: str) -> list[Path]:
    mod = importlib.import_module(module)
    origin = Path(mod.__file__ or "")
    if origin.name == "__init__.py":
        return sorted(p for p in origin.parent.rglob("*.py") if "__pycache__" not in p.parts)
    return [origin]
