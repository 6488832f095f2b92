"""Shared fixtures: where the real H&E data lives, and small synthetic helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_dir() -> Path:
    """``$SLIDEMIL_SHARED_DATA`` or ``../shared/data`` beside the project."""
    return Path(os.environ.get("SLIDEMIL_SHARED_DATA", DEFAULT_SHARED))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real H&E data not found at {root} (set SLIDEMIL_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def slides_dir(shared_data: Path) -> Path:
    return shared_data / "slides"


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    """A small synthetic demo dataset (6 slides of 3 cases), generated once per test session."""
    from slidemil.demo.dataset import generate_demo_dataset

    out = tmp_path_factory.mktemp("small_demo")
    generate_demo_dataset(
        out, n_cases=3, slides_per_case=2, width_um=900, height_um=700, seed=3, workers=1, progress=False
    )
    return out
