"""The slide manifest: ``slide_id, case_id, path, label`` (+ optional ``mpp``, ``split``, annotation paths).

Paths are resolved relative to the manifest's own folder so a project can move without editing the table.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

REQUIRED_COLUMNS: tuple[str, ...] = ("slide_id", "case_id", "path", "label")
#: columns holding file paths relative to the manifest (besides ``path``): annotations and masks
PATH_SUFFIXES: tuple[str, ...] = ("_mask", "_geojson", "_annotation")
OPTIONAL_COLUMNS: tuple[str, ...] = ("mpp", "split")


class ManifestError(ValueError):
    """The manifest file itself cannot be read as a table (empty, not CSV); the message names the file."""


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read the CSV as strings (ids like ``007`` keep their zeros); ``mpp`` becomes float when present.

    Adds ``abs_path`` (the slide path resolved against the manifest folder). Does not validate: see
    :mod:`slidemil.data.validation`. Raises :class:`ManifestError` for an empty file or one pandas cannot
    parse, instead of pandas' own exceptions.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path}")
    expected = ",".join(REQUIRED_COLUMNS)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise ManifestError(
            f"manifest {path} is empty: expected a CSV with the header {expected} and one row per slide"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ManifestError(f"manifest {path} is not a readable CSV ({e}); expected the header {expected}") from None
    df.columns = [c.strip() for c in df.columns]
    if "mpp" in df.columns:
        df["mpp"] = pd.to_numeric(df["mpp"], errors="coerce")
    base = path.resolve().parent
    for col in path_columns(df):
        df[f"abs_{col}"] = [str((base / p).resolve()) if isinstance(p, str) and p else "" for p in df[col]]
    return df


def path_columns(df: pd.DataFrame) -> list[str]:
    """``path`` and the annotation columns (``*_mask``, ``*_geojson``, ``*_annotation``)."""
    return [c for c in df.columns if c == "path" or (not c.startswith("abs_") and c.endswith(PATH_SUFFIXES))]


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` (as read by :func:`read_manifest`) at ``path``, re-expressing file paths relative to the
    new location so the copy resolves to the same files; the ``abs_*`` helper columns are dropped."""
    from slidemil.utils.atomic import atomic_path

    path = Path(path)
    out = df.drop(columns=[c for c in df.columns if c.startswith("abs_")]).copy()
    base = path.resolve().parent
    for col in path_columns(out):
        out[col] = [os.path.relpath(a, base) if a else "" for a in df[f"abs_{col}"]]
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False)


def row_mpp(row: pd.Series) -> float | None:
    """The manifest's mpp for a row, or None when the column is absent or the cell empty."""
    value = row.get("mpp")
    return None if value is None or pd.isna(value) else float(value)
