"""Every registered method, present and future, honours the method contract end to end.

For each method: build from its config, one training epoch on a tiny synthetic cohort, bundle save and load
in a fresh process with identical predictions, explain() giving score layers of the right lengths, and one
Optuna trial drawn from the method's own search space. A new method is covered by registering it; tile classifiers (``trains_on = "tiles"``, CLASS-M) have their
own loop and are covered by their tests (tests/test_classm.py).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from slidemil.bundle import BundleSpec, ModelBundle
from slidemil.data.splits import SplitConfig, make_splits
from slidemil.methods import SlideData, TileSetView, available_methods, get_method
from slidemil.scoring import BundleScorer
from slidemil.segmenters import from_groups
from slidemil.tracking import setup_tracking
from slidemil.training.config import TrainConfig
from slidemil.training.data import CachedSource, SlideRef
from slidemil.training.fold import train_fold
from slidemil.training.tuning import SearchSpace, TuneConfig, run_tuning

CLASSES = ["normal", "tumour"]
DIM = 16
SCALE = 2  # parents 2x coarser: 4 children each
ROOT = Path(__file__).resolve().parents[1]


def synthetic_segments(grid: np.ndarray) -> object:
    """Regions for methods that read a ``segments`` layer: the 2 x 4 blocks of the grid, one region
    spanning two blocks (tiles in two segments), a one-tile region, and the rest of the last two rows unsegmented."""
    rows, cols = grid.shape
    blocks = [grid[r:r + 2, c:c + 4].ravel() for r in range(0, rows - 2, 2) for c in range(0, cols, 4)]
    members = [*blocks, grid[1:3, 2:6].ravel(), np.array([grid[4, 0]])]
    areas = [8.0 * 5000] * len(blocks) + [8.0 * 5000, 900.0]
    return from_groups(grid.size, members, areas, 5000.0)


def synthetic_slide(slide_id: str, label: int, rng: np.random.Generator) -> SlideData:
    """A 6 x 8 grid of tiles with features (signal tiles on tumour slides), a parents set whose children
    are the 2 x 2 tiles below each parent (one child is dropped per slide to exercise the -1 marker), and a
    ``segments`` layer (:func:`synthetic_segments`)."""
    rows, cols, px = 6, 8, 224
    ys, xs = np.mgrid[0:rows, 0:cols]
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64) * px
    feats = rng.normal(size=(rows * cols, DIM)).astype(np.float32)
    if label == 1:
        feats[:5, :4] += 4.0
    grid = np.arange(rows * cols).reshape(rows, cols)
    grid[0, 0] = -1  # a child that fell out of the tissue
    children = np.stack([grid[r:r + SCALE, c:c + SCALE].ravel()
                         for r in range(0, rows, SCALE) for c in range(0, cols, SCALE)])
    p_coords = np.array([[c * px, r * px] for r in range(0, rows, SCALE) for c in range(0, cols, SCALE)],
                        dtype=np.int64)
    p_feats = np.stack([feats[k[k >= 0]].mean(0) for k in children]).astype(np.float32)
    return SlideData(slide_id, None,
                     {"tiles": TileSetView(coords, px), "parents": TileSetView(p_coords, px * SCALE, children)},
                     {"tiles": feats, "parents": p_feats},
                     {"segments": synthetic_segments(np.arange(rows * cols).reshape(rows, cols))})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    rng = np.random.default_rng(0)
    rows, slides = [], {}
    for c in range(10):
        for s in range(2):
            sid = f"case{c}_s{s}"
            slides[sid] = synthetic_slide(sid, c % 2, rng)
            rows.append({"slide_id": sid, "case_id": f"case{c}", "label": CLASSES[c % 2]})
    table = pd.DataFrame(rows)
    splits = make_splits(table, SplitConfig(folds=1, val_frac=0.2, test_frac=0.2, seed=0))
    with open(root / "slides.pkl", "wb") as fh:
        pickle.dump(slides, fh)
    setup_tracking(root, "contract")
    return root, table, splits, slides


def _config(name: str) -> dict:
    dims = {"tiles": DIM, "parents": DIM}
    return get_method(name).resolve_config({}, n_classes=len(CLASSES), feature_dims=dims)


def _bundle_context(method) -> dict:
    encoders = {ts: {"name": "synthetic", "feature_dim": d} for ts, d in method.input_dims().items()}
    return {"components": {"encoders": encoders}, "tile_sets": sorted(encoders),
            "tiling": {"tile_px": 224, "target_mpp": 0.5, "multiscale_factor": SCALE}}


@pytest.mark.parametrize("name", [m for m in available_methods() if get_method(m).trains_on == "slides"])
def test_method_contract(name, cohort):
    root, table, splits, slides = cohort
    method = get_method(name)(_config(name))
    assert method.search_space, f"{name} declares no search space"
    index = {c: i for i, c in enumerate(CLASSES)}
    refs = {r.slide_id: SlideRef(r.slide_id, index[r.label]) for r in table.itertuples()}
    parts = {s: [refs[i] for i in splits.loc[splits.split == s, "slide_id"]] for s in ("train", "val", "test")}
    source = CachedSource(lambda sid: slides[sid])

    res = train_fold(0, method, parts, source, TrainConfig(max_epochs=1, min_epochs=1, patience=1), CLASSES)
    assert res.epochs_run == 1 and res.monitor == method.monitor
    assert set(res.predictions["split"]) == {"val", "test"}
    probs = res.predictions[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)

    spec = BundleSpec(method=name, method_config=method.config.to_dict(), class_names=CLASSES,
                      **_bundle_context(method))
    folder = ModelBundle(spec, res.state_dict).save(root / name / "bundle")
    scorer = BundleScorer(ModelBundle.load(folder))
    here = {}
    for sid in table["slide_id"]:
        scored = scorer.score(slides[sid])
        assert scored.layers, f"{name}.explain returned no score layer"
        for layer in scored.layers:
            assert len(layer.values) == len(slides[sid].tile_sets[layer.tile_set])
            assert np.isfinite(np.asarray(layer.values, dtype=float)).all()
        here[sid] = scored.probabilities
    for r in res.predictions.itertuples():  # the bundle reproduces the fold's own predictions
        assert here[r.slide_id]["tumour"] == pytest.approx(r.prob_tumour, abs=1e-5)

    script = textwrap.dedent(f"""
        import json, pickle
        from slidemil.bundle import ModelBundle
        from slidemil.scoring import BundleScorer
        slides = pickle.load(open({str(root / "slides.pkl")!r}, "rb"))
        scorer = BundleScorer(ModelBundle.load({str(folder)!r}))
        out = {{}}
        for sid, slide in slides.items():
            s = scorer.score(slide)
            out[sid] = {{"probs": s.probabilities, "layers": {{la.name: len(la.values) for la in s.layers}}}}
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    for sid, probs in here.items():
        for c in CLASSES:
            assert fresh[sid]["probs"][c] == pytest.approx(probs[c], abs=1e-6)

    cfg = TuneConfig(study_name=f"contract-{name}", storage=f"sqlite:///{root / 'optuna.db'}", n_trials=1,
                     metric="val_loss", space=SearchSpace(methods=[name]))
    study = run_tuning(table, splits, cfg, {}, TrainConfig(max_epochs=1, min_epochs=1, patience=1), CLASSES,
                       source, {"tiles": DIM, "parents": DIM})
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert set(trial.params) == {"method", "lr", "weight_decay", *method.search_space}
