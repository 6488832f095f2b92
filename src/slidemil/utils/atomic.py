"""Atomic file writes: a reader never sees a half-written output that looks finished."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from slidemil.utils.jsonable import to_jsonable


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or final.suffix + ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj: object) -> None:
    """Indented, key-sorted strict JSON (see :func:`~slidemil.utils.jsonable.to_jsonable`: NaN -> null)."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False, default=str)
    write_text_atomic(path, text + "\n")


def write_png_atomic(path: str | Path, image) -> Path:
    """Write an RGB (h, w, 3) or grey (h, w) uint8 image as PNG atomically."""
    import cv2
    import numpy as np

    image = np.ascontiguousarray(image, dtype=np.uint8)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image)
    if not ok:
        raise ValueError(f"could not encode PNG for {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return Path(path)


def remove_stale_temps(folder: str | Path) -> int:
    """Delete temp files left by a killed run (``.<name>.*.tmp``); returns how many were removed."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            n += 1
    return n
