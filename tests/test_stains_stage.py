"""The `stains` layer and stage on a tiny synthetic cohort: one matrix and one QC panel per slide, a broken slide
named while the others finish, resume-key skipping, re-fitting when a setting changes, pruning, and the layer
refusing a matrix fitted on other tiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from slidemil.data.manifest import read_manifest
from slidemil.data.tile_batch import SlideJob, TileOutputs, tile_slides
from slidemil.slides.tiling import TilingParams
from slidemil.slides.tissue import TissueParams
from slidemil.stains import FITTED, StainConfig, reference_matrix
from slidemil.stains.layer import KIND, read_stains, stains_from_layer, write_stains
from slidemil.store import LayerError, SlideStore, read_tile_set, tiles_digest

TILE_PX = 128


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three procedural H&E slides (500 x 400 um), tiled at 128 px: the demo generator and the tile stage's code."""
    from slidemil.demo.dataset import generate_demo_dataset

    root = tmp_path_factory.mktemp("stains_cohort")
    generate_demo_dataset(root / "demo", n_cases=3, slides_per_case=1, width_um=500, height_um=400, seed=5,
                          workers=1, progress=False)
    jobs = [SlideJob(r.slide_id, r.abs_path) for r in read_manifest(root / "demo" / "manifest.csv").itertuples()]
    results = tile_slides(jobs, TilingParams(tile_px=TILE_PX, target_mpp=0.5), TissueParams(a_t=0.05, a_h=0.05),
                          TileOutputs(root / "tiles", root / "tissue", root / "qc"), workers=1, progress=False)
    assert all(r.status == "done" for r in results)
    return root, [j.slide_id for j in jobs]


def _params(root, **stains) -> dict:
    params = {
        "validate": {"manifest_out": str(root / "demo" / "manifest.csv")},
        "tile": {"tiles_dir": str(root / "tiles")},
        "features": {"out_dir": str(root / "features")},
        "stains": {"fit": {"sample_step": 10, "beta": 0.15}, "tile_set": "tiles", "qc_tiles": 3,
                   "out_dir": str(root / "stains"), "summary": str(root / "stains.json"), "allow_failures": False,
                   **stains},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return params


def _run(root, monkeypatch, **stains) -> tuple[int, dict]:
    from pipelines import stains as stage

    _params(root, **stains)
    monkeypatch.setenv("SLIDEMIL_PARAMS", str(root / "params.yaml"))
    rc = stage.main()
    return rc, json.loads((root / "stains.json").read_text())


def test_stage_fits_every_slide_names_a_broken_one_and_resumes(cohort, monkeypatch):
    root, ids = cohort
    good, broken = ids[:2], ids[2]
    slide_file = read_tile_set(root / "tiles" / f"{broken}.h5").slide_path
    with open(slide_file, "r+b") as fh:  # a slide file damaged after tiling
        fh.write(b"\0" * 4096)

    rc, summary = _run(root, monkeypatch)
    assert rc == 1  # a failed slide fails the stage, after the others were done
    assert set(summary["failures"]) == {broken} and broken in summary["failures"][broken]
    assert summary["n_fitted"] == 2 and summary["n_skipped"] == 0 and summary["n_fallback"] == 0
    store = SlideStore(root / "tiles", root / "features", {KIND: root / "stains"})
    for sid in good:
        tiles = store.tile_set(sid)
        m = stains_from_layer(store.layer(sid, KIND), tiles_digest(tiles))
        assert m.source == FITTED and m.vectors[0, 0] > m.vectors[1, 0]
        np.testing.assert_allclose(summary["slides"][sid]["vectors"], m.vectors)
        # the demo renders with stains close to the standard H&E reference
        cos = (m.vectors * reference_matrix().vectors).sum(1)
        assert (np.degrees(np.arccos(np.clip(cos, -1, 1))) < 10).all()
        png = Image.open(root / "stains" / "qc" / f"{sid}.png")
        n_rows = min(3, len(tiles))
        assert png.mode == "RGB" and png.size == (3 * TILE_PX + 8, n_rows * TILE_PX + 4 * (n_rows - 1))
    assert not (root / "stains" / f"{broken}.h5").exists()

    rc, summary = _run(root, monkeypatch, allow_failures=True)  # same settings and tiles: skipped
    assert rc == 0 and summary["n_skipped"] == 2 and set(summary["slides"]) == set(good)
    _dashboard_shows_the_stains(root, good, monkeypatch)

    rc, summary = _run(root, monkeypatch, allow_failures=True, fit={"sample_step": 10, "beta": 0.2})
    assert summary["n_skipped"] == 0 and set(summary["slides"]) == set(good)  # a changed setting re-fits

    manifest = root / "demo" / "manifest.csv"
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join([rows[0]] + [r for r in rows[1:] if not r.startswith(good[1])]) + "\n")
    _run(root, monkeypatch, allow_failures=True, fit={"sample_step": 10, "beta": 0.2})
    assert not (root / "stains" / f"{good[1]}.h5").exists()  # a slide dropped from the manifest is pruned
    assert not (root / "stains" / "qc" / f"{good[1]}.png").exists()


def _dashboard_shows_the_stains(root, good: list[str], monkeypatch) -> None:
    """The Data page lists the slides with a stain QC panel and shows the picked slide's matrix."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SLIDEMIL_PROJECT_ROOT", str(root))
    monkeypatch.setenv("SLIDEMIL_PARAMS", str(root / "params.yaml"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("views/data.py").run()
    assert not at.exception, [e.value for e in at.exception]
    pick = at.selectbox(key="stain_slide")
    assert pick.options == sorted(good)
    pick.set_value(good[1]).run()
    captions = [img.caption for el in at.image for img in el.proto.imgs]
    assert f"{good[1]}: tiles as RGB | hematoxylin | eosin" in captions
    matrix = [d.value for d in at.dataframe if "max_concentration" in d.value.columns][0]
    assert list(matrix.index) == ["hematoxylin", "eosin"] and matrix.loc["hematoxylin", "R"] > matrix.loc["eosin", "R"]


def test_stains_layer_round_trip_and_tiles_check(tmp_path):
    m = reference_matrix(n_pixels=42)
    path = write_stains(tmp_path / "s.h5", m, config=StainConfig(), tiles_digest="abc", resume_key="k")
    back = read_stains(path, tiles_digest="abc")
    np.testing.assert_array_equal(back.vectors, m.vectors)
    assert back.source == m.source and back.n_pixels == 42
    with pytest.raises(LayerError, match="other tiles"):
        read_stains(path, tiles_digest="re-tiled")
