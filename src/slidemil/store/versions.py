"""What goes into a resume key besides the settings: the producing code's version and the input's identity.

A stage skips a slide whose output carries the same resume key. If the key held only settings, editing a
tissue-segmentation constant would leave every slide "skipped" while DVC (which sees the source change)
records the stale outputs as fresh. So the key also holds a hash of the source files of the modules that
produce the layer. The hash is of the raw source: a comment edit re-runs too, which costs time but can never
leave a stale output.

The input slide is identified without its absolute path (a moved or fresh clone must not redo everything):
by its size and a hash of its first and last MiB. mtime is left out on purpose: a checkout or ``dvc pull``
sets it to "now".
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

#: modules whose code decides the tile sets (segmentation, grid, geometry, pixel reads, the tile writer)
TILE_CODE_MODULES = (
    "slidemil.slides.tissue",
    "slidemil.slides.tissue_qc",
    "slidemil.slides.tiling",
    "slidemil.slides.tile_set",
    "slidemil.slides.masks",
    "slidemil.slides.geometry",
    "slidemil.slides.reader",
    "slidemil.slides.backends",
    "slidemil.data.tile_batch",
    "slidemil.store.layers",
    "slidemil.store.tile_sets",
)
#: modules whose code decides the features (tile reading + batching, the encoders, the feature writer)
FEATURE_CODE_MODULES = (
    "slidemil.features.extract",
    "slidemil.encoders",
    "slidemil.store.layers",
    "slidemil.store.features",
)
_EDGE_BYTES = 1 << 20


def code_version(modules: Iterable[str]) -> str:
    """Short hash of the source of ``modules`` (a package counts with every ``.py`` file under it)."""
    return _code_version(tuple(modules))


@lru_cache(maxsize=32)
def _code_version(modules: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in modules:
        for f in _source_files(name):
            h.update(f"{name}:{f.name}\n".encode())
            h.update(f.read_bytes().replace(b"\r\n", b"\n"))
    return h.hexdigest()[:16]


def tile_code_version() -> str:
    return code_version(TILE_CODE_MODULES)


def feature_code_version() -> str:
    return code_version(FEATURE_CODE_MODULES)


def _source_files(module: str) -> list[Path]:
    mod = importlib.import_module(module)
    origin = Path(mod.__file__ or "")
    if origin.name == "__init__.py":
        return sorted(p for p in origin.parent.rglob("*.py") if "__pycache__" not in p.parts)
    return [origin]


def slide_fingerprint(path: str | Path) -> dict[str, object]:
    """``{size, sha256 of the first + last MiB}`` of a slide file (a folder: of every file in it, by name).

    Cheap on multi-GB slides, independent of where the file lives, and changed by any re-scan or re-export.
    """
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    size = 0
    for f in files:
        n = f.stat().st_size
        size += n
        h.update(f"{f.relative_to(path) if path.is_dir() else ''}:{n}\n".encode())
        with f.open("rb") as fh:
            h.update(fh.read(_EDGE_BYTES))
            if n > _EDGE_BYTES:
                fh.seek(max(_EDGE_BYTES, n - _EDGE_BYTES))
                h.update(fh.read(_EDGE_BYTES))
    return {"size": size, "edges_sha256": h.hexdigest()[:16]}
