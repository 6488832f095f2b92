"""The slide manifest: ``slide_id, case_id, path, label`` (+ optional ``mpp``, ``split``, annotation paths).

Paths are resolved relative to the manifest's own folder so a project can move without editing the table.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

REQUIRED_COLUMNS: tuple[str, ...] = ("slide_id", "case_id", "path", "label")
OPTIONAL_COLUMNS: tuple[str, ...] = ("mpp", "split")


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read the CSV as strings (ids like ``007`` keep their zeros); ``mpp`` becomes float when present.

    Adds ``abs_path`` (the slide path resolved against the manifest folder). Does not validate: see
    :mod:`slidemil.data.validation`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"manifest not found: {path}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    df.columns = [c.strip() for c in df.columns]
    if "mpp" in df.columns:
        df["mpp"] = pd.to_numeric(df["mpp"], errors="coerce")
    if "path" in df.columns:
        base = path.resolve().parent
        df["abs_path"] = [str((base / p).resolve()) if isinstance(p, str) and p else "" for p in df["path"]]
    return df


def row_mpp(row: pd.Series) -> float | None:
    """The manifest's mpp for a row, or None when the column is absent or the cell empty."""
    value = row.get("mpp")
    return None if value is None or pd.isna(value) else float(value)
