"""Helpers every backend shares: error text without server paths, lenient metadata numbers."""

from __future__ import annotations

import math
from pathlib import Path


def library_message(error: BaseException, path: Path) -> str:
    """A library's error text with the file's directory removed.

    Messages name files by their name only: enough to find the slide in a manifest, and a server
    answering a client must not reveal where it keeps uploads.
    """
    return str(error).replace(str(path.parent) + "/", "").replace(str(path.resolve().parent) + "/", "")


def positive_mean(*values: object) -> float | None:
    """Mean of the values that parse as positive finite floats, or None."""
    good = []
    for v in values:
        try:
            f = float(v)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(f) and f > 0:
            good.append(f)
    return sum(good) / len(good) if good else None
