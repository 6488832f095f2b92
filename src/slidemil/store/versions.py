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
from pathlib import Path

from slidemil.utils.hashing import code_version

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
    "slidemil.features",
    "slidemil.encoders",
    "slidemil.store.layers",
    "slidemil.store.features",
)
_EDGE_BYTES = 1 << 20


def tile_code_version() -> str:
    return code_version(TILE_CODE_MODULES)


def feature_code_version() -> str:
    return code_version(FEATURE_CODE_MODULES)


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
