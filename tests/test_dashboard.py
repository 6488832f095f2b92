"""The Streamlit dashboard against a small but real fixture project: a sqlite MLflow store with two cross-validated
model families, a registered champion and challenger, and DVC-style outputs (heatmaps, tissue, QC, reports).

Also imported by ``test_dashboard_browser.py`` (the ``dashboard_project`` fixture is built once per session).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
CLASSES = ["normal", "subtype_a", "subtype_b"]
SLIDE_DIMS = (4096, 3072)  # level-0 (w, h) of every fixture slide
THUMB_DS = 8.0  # thumbnails are 512 x 384
TILE_L0 = 256
N_SLIDES, N_FOLDS = 12, 3
MODEL_NAME = "slidemil-demo"
HEATMAP_SLIDES = ("s00", "s01")
MODEL_CFG = {
    "clam_sb": {"size": "small", "dropout": 0.25, "k_sample": 8, "bag_weight": 0.7},
    "abmil": {"size": "small", "dropout": 0.1},
}
STRENGTH = {"clam_sb": 3.0, "abmil": 0.6}


# ---- fixture builders ----------------------------------------------------------------------------------
def _predictions(model: str, seed: int) -> pd.DataFrame:
    """Per-fold val/test predictions; fold f tests s(4f)..s(4f+3). Under clam_sb s00 is right, s01 wrong."""
    rng = np.random.default_rng(seed)
    rows = []
    for fold in range(N_FOLDS):
        order = np.roll(np.arange(N_SLIDES), -4 * fold)
        for split, ids in (("test", order[:4]), ("val", order[4:8])):
            for i in ids:
                y = int(i % 3)
                logits = rng.normal(0.0, 1.0, 3)
                logits[y] += STRENGTH[model]
                if model == "clam_sb" and i == 0:
                    logits[y] += 4.0
                if model == "clam_sb" and i == 1:
                    logits[(y + 1) % 3] += 10.0
                p = np.exp(logits - logits.max())
                p /= p.sum()
                rows.append({"fold": fold, "slide_id": f"s{i:02d}", "split": split, "label": y,
                             "pred": int(p.argmax()), **{f"prob_{c}": float(v) for c, v in zip(CLASSES, p, strict=True)}})
    return pd.DataFrame(rows)


def _cv_summary(preds: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    from slidemil.evaluation.metrics import METRICS, slide_metrics, summarise_folds

    probs = [f"prob_{c}" for c in CLASSES]
    rows = []
    for fold, g in preds.groupby("fold"):
        row = {"fold": int(fold), "best_epoch": 3 + int(fold), "epochs_run": 6, "best_val_loss": 0.5 + 0.1 * fold}
        for split in ("val", "test"):
            s = g[g.split == split]
            row.update({f"{split}_{k}": v for k, v in slide_metrics(s["label"].to_numpy(), s[probs].to_numpy()).items()})
        rows.append(row)
    per_fold = pd.DataFrame(rows)
    summary = {split: summarise_folds(per_fold.rename(columns=lambda c, s=split: c[len(s) + 1:] if c.startswith(s + "_")
                                                      else c)[list(METRICS)]) for split in ("test", "val")}
    return per_fold, summary


def _tiny_bundle(folder: Path, tag: str) -> Path:
    import torch

    from slidemil.bundle import ModelBundle

    cfg = {"in_dim": 8, "n_classes": len(CLASSES)}
    torch.manual_seed(0)
    return ModelBundle.create("abmil", cfg, CLASSES, {"name": "toy", "feature_dim": 8}, {"tile_px": 224},
                              metadata={"tag": tag}).save(folder)


def _log_models(root: Path, work: Path) -> dict:
    """Two CV parent runs with nested folds in a real sqlite store; both bundles registered and promoted."""
    import mlflow

    from slidemil.evaluation.metrics import confusion, roc_points
    from slidemil.evaluation.plots import plot_confusion, plot_roc
    from slidemil.mlflow_model import log_bundle
    from slidemil.registry import register_and_promote
    from slidemil.tracking import setup_tracking

    setup_tracking(root, "slidemil-demo")
    facts: dict = {"models": {}}
    for seed, model in enumerate(MODEL_CFG):
        preds = _predictions(model, seed)
        per_fold, summary = _cv_summary(preds)
        with mlflow.start_run(run_name=model) as parent:
            mlflow.set_tags({"slidemil.model": model, "slidemil.kind": "cv-parent"})
            mlflow.log_params({f"model.{k}": v for k, v in MODEL_CFG[model].items()})
            mlflow.log_params({"train.lr": 2e-4, "train.max_epochs": 40, "encoder.name": "resnet50_trunc",
                               "encoder.weights": "random", "tiling.target_mpp": 0.5, "n_folds": N_FOLDS})
            for row in per_fold.to_dict(orient="records"):
                fold = int(row["fold"])
                with mlflow.start_run(run_name=f"{model}-fold{fold}", nested=True):
                    mlflow.set_tags({"slidemil.model": model, "slidemil.fold": str(fold), "slidemil.kind": "cv-fold"})
                    mlflow.log_params({"fold": fold, "n_train": 4, "n_val": 4, "n_test": 4})
                    for epoch in range(6):
                        mlflow.log_metrics({"train_loss": 1.2 / (epoch + 1), "val_loss": 1.0 / (epoch + 1) + 0.2},
                                           step=epoch)
                    mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "fold"})
            for split, s in summary.items():
                for m, v in s.items():
                    mlflow.log_metrics({f"{split}_{m}_mean": v["mean"], f"{split}_{m}_std": v["std"]})
            mlflow.log_params({"selected_fold": 0, "selection": "lowest validation loss"})
            report = work / model / "report"
            report.mkdir(parents=True)
            preds.to_csv(report / "predictions.csv", index=False)
            preds[["fold", "slide_id", "split"]].to_csv(report / "splits.csv", index=False)
            per_fold.to_csv(report / "per_fold_metrics.csv", index=False)
            test = preds[preds.split == "test"]
            probs = test[[f"prob_{c}" for c in CLASSES]].to_numpy()
            plot_roc(roc_points(test["label"].to_numpy(), probs, CLASSES).assign(fold=0), report / "roc_test.png",
                     f"{model}: test ROC")
            plot_confusion(confusion(test["label"].to_numpy(), probs, len(CLASSES)), CLASSES,
                           report / "confusion_test.png", f"{model}: test")
            mlflow.log_artifacts(str(report), "report")
            info = log_bundle(_tiny_bundle(work / model / "bundle", model), name="model")
        promo = register_and_promote(info.model_uri, MODEL_NAME, "val_auc_mean", summary["val"]["auc"]["mean"],
                                     run_id=parent.info.run_id)
        facts["models"][model] = {"run_id": parent.info.run_id, "summary": summary, "preds": preds,
                                  "alias": promo.alias, "version": promo.version, "reason": promo.reason}
    assert facts["models"]["clam_sb"]["alias"] == "champion"
    assert facts["models"]["abmil"]["alias"] == "challenger", "fixture: abmil must validate worse than clam_sb"
    return facts


def _write_dvc_outputs(root: Path, facts: dict) -> None:
    from slidemil.evaluation.metrics import roc_points

    for model, f in facts["models"].items():
        out = root / "data" / "train" / model
        out.mkdir(parents=True)
        f["preds"].to_csv(out / "predictions.csv", index=False)
        # abmil's summary names an older run, so the Runs page must use that run's own artifact for its ROC
        run_id = f["run_id"] if model == "clam_sb" else "0ld0000000000000000000000000000"
        (out / "summary.json").write_text(json.dumps({"model": model, "parent_run_id": run_id, "selected_fold": 0,
                                                      "summary": f["summary"]}))
        test = f["preds"][f["preds"].split == "test"]
        roc = roc_points(test["label"].to_numpy(), test[[f"prob_{c}" for c in CLASSES]].to_numpy(), CLASSES)
        (root / "data" / "eval" / "roc").mkdir(parents=True, exist_ok=True)
        roc.to_csv(root / "data" / "eval" / "roc" / f"{model}.csv", index=False)
    (root / "data" / "eval" / "metrics.json").write_text(json.dumps(
        {m: {"test_auc": {"mean": f["summary"]["test"]["auc"]["mean"]}} for m, f in facts["models"].items()}))

    reports = root / "data" / "reports"
    reports.mkdir(parents=True)
    (reports / "validation.json").write_text(json.dumps({
        "success": False, "n_rows": N_SLIDES, "missing_columns": [],
        "bad_rows": [{"row": 5, "slide_id": "s03", "reasons": "file does not exist"}],
        "expectations": [
            {"expectation": "expect_column_values_to_be_unique", "column": "slide_id", "success": True,
             "reason": "duplicate slide_id", "unexpected_count": 0, "unexpected_index_list": []},
            {"expectation": "expect_column_values_to_be_in_set", "column": "_file_exists", "success": False,
             "reason": "file does not exist", "unexpected_count": 1, "unexpected_index_list": [3]},
        ]}))
    (reports / "validation.html").write_text("<html><body><h1>FAILED</h1></body></html>")
    (reports / "tiling.json").write_text(json.dumps({"n_slides": 11, "n_done": 10, "n_skipped": 0, "n_failed": 1,
                                                     "failures": {"s07": "NoTissueError: no tissue found"}}))


def _ellipse_fc(slide_id: str) -> dict:
    pts = cv2.ellipse2Poly((2048, 1536), (1400, 1000), 0, 0, 360, 10)
    ring = [[int(x), int(y)] for x, y in pts] + [[int(pts[0][0]), int(pts[0][1])]]
    return {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {
        "type": "Polygon", "coordinates": [ring]}, "properties": {"objectType": "annotation", "name": slide_id}}]}


def _thumbnail(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, h = round(SLIDE_DIMS[0] / THUMB_DS), round(SLIDE_DIMS[1] / THUMB_DS)
    img = np.full((h, w, 3), 243, np.uint8)
    cv2.ellipse(img, (256, 192), (175, 125), 0, 0, 360, (214, 140, 190), -1)
    return np.clip(img.astype(int) + rng.integers(-12, 12, img.shape), 0, 255).astype(np.uint8)


def _write_slides(root: Path, facts: dict) -> None:
    from slidemil.evaluation.heatmap import (
        HeatmapParams,
        ranked_indices,
        render_heatmap,
        with_colorbar,
    )
    from slidemil.evaluation.tile_geojson import tiles_to_geojson
    from slidemil.slides.geometry import TileGeometry
    from slidemil.slides.masks import rasterize_polygons
    from slidemil.store import TileSetLayer, write_tile_sets
    from slidemil.utils.atomic import write_png_atomic
    from slidemil.utils.geojson import write_geojson

    data = root / "data"
    for d in ("tissue", "qc", "tiles", "heatmaps"):
        (data / d).mkdir(parents=True, exist_ok=True)
    xs, ys = np.meshgrid(np.arange(0, SLIDE_DIMS[0], TILE_L0), np.arange(0, SLIDE_DIMS[1], TILE_L0))
    grid = np.stack([xs.ravel(), ys.ravel()], 1)
    centre = grid + TILE_L0 / 2
    inside = ((centre[:, 0] - 2048) / 1400) ** 2 + ((centre[:, 1] - 1536) / 1000) ** 2 <= 1
    coords = grid[inside]
    params = HeatmapParams(canvas_max_side=2048, cmap="jet", alpha=0.5)
    clam = facts["models"]["clam_sb"]["preds"]
    rows = []
    for k, slide in enumerate(("s00", "s01", "s02")):
        fc = _ellipse_fc(slide)
        (data / "tissue" / f"{slide}.geojson").write_text(json.dumps(fc))
        thumb = _thumbnail(k)
        qc = thumb.copy()
        cv2.ellipse(qc, (256, 192), (175, 125), 0, 0, 360, (0, 200, 0), 2)
        write_png_atomic(data / "qc" / f"{slide}.png", qc)
        if slide not in HEATMAP_SLIDES:
            continue
        geometry = TileGeometry(TILE_L0, 0.5, 0.5, 0, 1.0, TILE_L0, TILE_L0, TILE_L0)
        tiles = TileSetLayer("tiles", slide, f"{slide}.svs", coords, geometry, np.ones(len(coords), np.float32))
        write_tile_sets(data / "tiles" / f"{slide}.h5", [tiles], attrs={"width": SLIDE_DIMS[0], "height": SLIDE_DIMS[1]})
        rng = np.random.default_rng(10 + k)
        hot = np.array([2600.0, 1300.0]) if k == 0 else np.array([1500.0, 1800.0])
        scores = np.exp(-((coords + TILE_L0 / 2 - hot) ** 2).sum(1) / (2 * 450.0**2)) + 0.03 * rng.normal(size=len(coords))
        out = data / "heatmaps" / slide
        tissue = rasterize_polygons(fc, thumb.shape[:2], THUMB_DS)
        res = render_heatmap(thumb, THUMB_DS, coords, TILE_L0, scores, params, tissue_mask=tissue,
                             mask_downsample=THUMB_DS, slide_dims=SLIDE_DIMS)
        write_png_atomic(out / "heatmap.png", with_colorbar(res.overlay_rgb, params.cmap))
        write_png_atomic(out / "thumbnail.png", thumb)
        write_geojson(out / "tiles.geojson", tiles_to_geojson(coords, TILE_L0, {"attention": scores}, slide))
        for rank, i in enumerate(ranked_indices(scores, 3), start=1):
            x, y = (coords[i] / THUMB_DS).astype(int)
            side = round(TILE_L0 / THUMB_DS)
            tile = cv2.resize(thumb[y:y + side, x:x + side], (96, 96), interpolation=cv2.INTER_NEAREST)
            write_png_atomic(out / "top_tiles" / f"{slide}_top{rank:03d}_score{scores[i]:+.4f}_x{coords[i, 0]}_y{coords[i, 1]}.png",
                     tile)
        p = clam[(clam.slide_id == slide) & (clam.split == "test")].iloc[0]
        rows.append({"slide_id": slide, "fold": int(p["fold"]), "label": CLASSES[int(p["label"])],
                     "pred": CLASSES[int(p["pred"])], **{f"prob_{c}": p[f"prob_{c}"] for c in CLASSES},
                     "n_tiles": len(coords), "top_tiles": 3, "localisation_auroc": 0.8734 if k == 0 else np.nan})
        facts.setdefault("scores", {})[slide] = scores
    pd.DataFrame(rows).to_csv(data / "heatmaps" / "index.csv", index=False)
    facts["index"] = pd.DataFrame(rows)
    facts["coords"] = coords


def build_fixture_project(root: Path, work: Path) -> dict:
    """Everything the dashboard reads, at the paths params.yaml names; returns the numbers to expect."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump({
        "data": {"classes": CLASSES},
        "validate": {"report_json": "data/reports/validation.json", "report_html": "data/reports/validation.html"},
        "tile": {"tiles_dir": "data/tiles", "tissue_dir": "data/tissue", "qc_dir": "data/qc",
                 "summary": "data/reports/tiling.json"},
        "train": {"experiment": "slidemil-demo", "models": list(MODEL_CFG), "out_dir": "data/train"},
        "evaluate": {"metrics": "data/eval/metrics.json", "roc_dir": "data/eval/roc"},
        "heatmaps": {"model": "clam_sb", "out_dir": "data/heatmaps", "top_k": 3,
                     "render": {"canvas_max_side": 2048, "blur_sigma_px": 0, "cmap": "jet", "alpha": 0.5}},
    }))
    facts = _log_models(root, work)
    _write_dvc_outputs(root, facts)
    _write_slides(root, facts)
    facts["root"] = root
    return facts


@pytest.fixture(scope="session")
def dashboard_project(tmp_path_factory) -> dict:
    from slidemil.tracking import default_tracking_uri

    root = tmp_path_factory.mktemp("dash_project")
    with pytest.MonkeyPatch.context() as mp:
        # mlflow.set_tracking_uri also exports $MLFLOW_TRACKING_URI; setenv here makes the context undo it
        mp.setenv("MLFLOW_TRACKING_URI", default_tracking_uri(root))
        return build_fixture_project(root, tmp_path_factory.mktemp("dash_work"))


# ---- AppTest helpers -----------------------------------------------------------------------------------
def _app(root: Path, monkeypatch, page: str | None = None, **env: str):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("SLIDEMIL_PROJECT_ROOT", str(root))
    for var in ("MLFLOW_TRACKING_URI", "SLIDEMIL_MODEL_NAME", "SLIDEMIL_PARAMS"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    _no_exception(at)
    return at


def _no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _texts(at) -> str:
    parts = []
    for kind in ("title", "subheader", "markdown", "caption", "info", "success", "error", "warning"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


def _frames(at) -> list[pd.DataFrame]:
    return [d.value for d in at.dataframe]


def _plotly(at, key: str) -> dict:
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        if el.proto.id and key in el.proto.id:
            return spec
    raise AssertionError(f"no plotly chart {key!r}")


def _arr(v) -> list:
    """A plotly trace array: a plain list, or a typed array ``{"dtype", "bdata"}`` when built from numpy."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


def _fmt(v: dict) -> str:
    return f"{v['mean']:.3f} ± {v['std']:.3f}"


# ---- pages on the empty project ------------------------------------------------------------------------
@pytest.mark.parametrize(("page", "expected"), [
    ("runs", "No MLflow store at"),
    ("slides", "No heatmaps yet"),
    ("registry", "No MLflow store at"),
    ("data", "No validation report yet"),
])
def test_empty_project_explains_what_is_missing(tmp_path, monkeypatch, page, expected):
    at = _app(tmp_path, monkeypatch, page)
    infos = [i.value for i in at.info]
    assert any(expected in i for i in infos), infos
    if page == "data":
        assert any("No tiling summary yet" in i for i in infos) and any("No QC thumbnails yet" in i for i in infos)
    assert not (tmp_path / "mlflow.db").exists(), "looking at an empty project must not create an MLflow store"
    assert list(tmp_path.iterdir()) == []


# ---- pages on the fixture project ----------------------------------------------------------------------
def test_runs_page_compares_parent_runs(dashboard_project, monkeypatch):
    f = dashboard_project
    at = _app(f["root"], monkeypatch)  # Runs is the default page
    assert at.selectbox[0].value == "slidemil-demo"
    table = _frames(at)[0]
    assert set(table["run_id"]) == {m["run_id"] for m in f["models"].values()}
    clam = table.set_index("model").loc["clam_sb"]
    assert clam["test AUC"] == _fmt(f["models"]["clam_sb"]["summary"]["test"]["auc"])
    assert clam["model.dropout"] == "0.25"

    # both runs compared by default: grouped bars with fold std as error bars
    bars = _plotly(at, "metric_bars")["data"]
    assert len(bars) == 2
    for trace in bars:
        s = f["models"][trace["name"].split(" · ")[0]]["summary"]["test"]
        assert trace["x"] == ["auc", "accuracy", "balanced_accuracy", "macro_f1"]
        assert trace["y"] == pytest.approx([s[m]["mean"] for m in trace["x"]])
        assert trace["error_y"]["array"] == pytest.approx([s[m]["std"] for m in trace["x"]])

    # ROC: clam_sb from the DVC output it produced, abmil from its run artifact (its summary names another run)
    text = _texts(at)
    assert "clam_sb" in text and "data/eval/roc/clam_sb.csv" in text
    assert "run artifact report/predictions.csv" in text
    roc = _plotly(at, "roc")["data"]
    assert [t["name"].split(" (")[0] for t in roc][0] == "chance" and len(roc) == 3

    # only differing params are listed; shared ones are not
    diff = next(d for d in _frames(at) if d.index.name == "param" or "model.dropout" in d.index)
    assert "model.dropout" in diff.index and "model.k_sample" in diff.index
    assert "train.lr" not in diff.index and "encoder.name" not in diff.index

    # switching to validation metrics updates the bars
    at.radio[0].set_value("val").run()
    _no_exception(at)
    val = {t["name"].split(" · ")[0]: t["y"][0] for t in _plotly(at, "metric_bars")["data"]}
    assert val["clam_sb"] == pytest.approx(f["models"]["clam_sb"]["summary"]["val"]["auc"]["mean"])

    # a single run: nothing to diff
    at.multiselect[0].set_value([f["models"]["abmil"]["run_id"]]).run()
    _no_exception(at)
    assert len(_plotly(at, "metric_bars")["data"]) == 1


def test_runs_page_fold_details(dashboard_project, monkeypatch):
    at = _app(dashboard_project["root"], monkeypatch)
    folds = next(d for d in _frames(at) if "fold" in d.columns and "test_auc" in d.columns)
    assert sorted(folds["fold"].astype(int)) == [0, 1, 2]
    at.checkbox[0].check().run()
    _no_exception(at)
    curves = _plotly(at, "loss_curves")["data"]
    assert len(curves) == 6  # 3 folds x (train, val)
    assert _arr(curves[0]["y"]) == pytest.approx([1.2 / (e + 1) for e in range(6)])
    assert len(at.image) >= 1 and any("roc_test.png" in c for c in _image_captions(at))


def _image_captions(at) -> list[str]:
    return [img.caption for el in at.image for img in el.proto.imgs]


def test_slides_page_shows_heatmap_prediction_and_top_tiles(dashboard_project, monkeypatch):
    f = dashboard_project
    at = _app(f["root"], monkeypatch, "slides")
    row = f["index"].set_index("slide_id").loc["s00"]
    model_box, slide_box = at.selectbox[0], at.selectbox[1]
    assert model_box.value == "clam_sb" and slide_box.value == "s00"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"True label": row["label"], "Predicted": row["pred"]}
    assert any("Correct" in s.value for s in at.success)
    probs = _frames(at)[0].set_index("class")["probability"]
    assert probs.to_dict() == pytest.approx({c: row[f"prob_{c}"] for c in CLASSES})
    text = _texts(at)
    assert f"{len(f['coords'])} tiles · 8.00 level-0 px per px (slide size)" in text
    assert "localisation AUROC: 0.873" in text
    captions = _image_captions(at)
    assert captions[0].startswith("s00: clam_sb attention") and "opacity 0.50, jet" in captions[0]
    best = np.sort(f["scores"]["s00"])[::-1][:3]
    assert captions[1:4] == [c for c in captions[1:4] if c.startswith("#")]
    assert [float(c.split("score ")[1].split(" ")[0]) for c in captions[1:4]] == pytest.approx(best, abs=6e-4)

    at.slider[0].set_value(0.8).run()  # opacity
    at.selectbox[2].set_value("viridis").run()  # colormap
    at.toggle[0].set_value(True).run()  # tissue contours
    _no_exception(at)
    assert "opacity 0.80, viridis" in _image_captions(at)[0]

    # the misclassified slide
    at.selectbox[1].set_value("s01").run()
    _no_exception(at)
    r1 = f["index"].set_index("slide_id").loc["s01"]
    assert {m.label: m.value for m in at.metric}["Predicted"] == r1["pred"] != r1["label"]
    assert any("Misclassified" in e.value for e in at.error)

    # another model's prediction for the same slide comes from its predictions.csv (first test fold)
    at.selectbox[0].set_value("abmil").run()
    _no_exception(at)
    ab = f["models"]["abmil"]["preds"]
    ab = ab[(ab.slide_id == "s01") & (ab.split == "test")].sort_values("fold").iloc[0]
    assert {m.label: m.value for m in at.metric} == {"True label": CLASSES[ab["label"]],
                                                     "Predicted": CLASSES[ab["pred"]]}


def test_registry_page_shows_champion_and_challenger(dashboard_project, monkeypatch):
    f = dashboard_project
    at = _app(f["root"], monkeypatch, "registry")
    champ, chall = f["models"]["clam_sb"], f["models"]["abmil"]
    metrics = [(m.label, m.value) for m in at.metric]
    assert metrics == [("Version", f"v{champ['version']}"),
                       ("val_auc_mean", f"{champ['summary']['val']['auc']['mean']:.4f}"),
                       ("Version", f"v{chall['version']}"),
                       ("val_auc_mean", f"{chall['summary']['val']['auc']['mean']:.4f}")]
    text = _texts(at)
    assert "champion: no champion yet" in text
    assert f"challenger: {chall['reason']}" in text and "<=" in chall["reason"]
    champ_table = _frames(at)[0].set_index("metric")
    t = champ["summary"]["test"]["auc"]
    assert champ_table.loc["auc", "test"] == f"{t['mean']:.4f} ± {t['std']:.4f}"
    versions = _frames(at)[-1]
    assert list(versions["version"]) == ["v2", "v1"] and list(versions["aliases"]) == ["challenger", "champion"]
    assert "MLFLOW_TRACKING_URI" not in os.environ, "the dashboard must not re-point MLflow for the process"


def test_store_without_matching_runs_or_model(dashboard_project, monkeypatch):
    """An experiment without CV runs and a model name nobody registered: clear messages, no failure."""
    at = _app(dashboard_project["root"], monkeypatch, SLIDEMIL_MODEL_NAME="no-such-model")
    at.selectbox[0].set_value("Default").run()
    _no_exception(at)
    assert any("No cross-validation runs in experiment `Default`" in i.value for i in at.info)
    at.switch_page("views/registry.py").run()
    _no_exception(at)
    assert any("Nothing is registered as `no-such-model` yet" in i.value for i in at.info)


def test_data_page_shows_validation_tiling_and_qc(dashboard_project, monkeypatch):
    at = _app(dashboard_project["root"], monkeypatch, "data")
    assert any(e.value.startswith("FAILED: 1 bad row(s) of 12") for e in at.error)
    bad = _frames(at)[0]
    assert bad.to_dict(orient="records") == [{"row": 5, "slide_id": "s03", "reasons": "file does not exist"}]
    assert {m.label: m.value for m in at.metric} == {"slides": "11", "tiled now": "10", "already done": "0",
                                                     "failed": "1"}
    assert any("NoTissueError" in str(v) for d in _frames(at) for v in d.to_numpy().ravel())
    qc = at.selectbox(key="qc_slide")
    assert qc.options == ["s00", "s01", "s02"]
    qc.set_value("s02").run()
    _no_exception(at)
    assert _image_captions(at)[0] == "s02: tissue contours and kept tiles"
    assert len(_image_captions(at)) == 1 + 3  # picked + gallery


# ---- the re-compositing helpers ------------------------------------------------------------------------
def test_recomposited_heatmap_equals_the_stage_image(dashboard_project):
    from dashboard import heatmap_view as hv

    folder = dashboard_project["root"] / "data" / "heatmaps" / "s00"
    thumb = cv2.cvtColor(cv2.imread(str(folder / "thumbnail.png")), cv2.COLOR_BGR2RGB)
    stage = cv2.cvtColor(cv2.imread(str(folder / "heatmap.png")), cv2.COLOR_BGR2RGB)
    tiles = hv.tile_scores_from_geojson(json.loads((folder / "tiles.geojson").read_text()))
    assert tiles.level0_px == TILE_L0 and len(tiles) == len(dashboard_project["coords"])
    assert np.array_equal(tiles.coords, dashboard_project["coords"])
    assert np.allclose(tiles.scores, dashboard_project["scores"]["s00"])
    ds, dims, how = hv.resolve_geometry(thumb.shape[:2], slide_dims=SLIDE_DIMS, tiles=tiles)
    assert (ds, dims, how) == (THUMB_DS, SLIDE_DIMS, "slide size")
    tissue = json.loads((dashboard_project["root"] / "data" / "tissue" / "s00.geojson").read_text())
    same = hv.composite(thumb, ds, tiles, dims, cmap="jet", alpha=0.5, tissue_fc=tissue)
    assert np.array_equal(same, stage)  # the stage's settings reproduce its image exactly

    plain = hv.composite(thumb, ds, tiles, dims, alpha=0.5, tissue_fc=tissue, colorbar=False)
    stronger = hv.composite(thumb, ds, tiles, dims, alpha=0.9, tissue_fc=tissue, colorbar=False)
    painted = np.any(plain != thumb, axis=2)
    assert 0.2 < painted.mean() < 0.6  # colour only on tiles inside the tissue
    assert not np.any(plain[~painted] != thumb[~painted])
    # more opacity: painted pixels move away from the thumbnail
    d_plain = np.abs(plain.astype(int) - thumb)[painted].mean()
    d_strong = np.abs(stronger.astype(int) - thumb)[painted].mean()
    assert d_strong > 1.5 * d_plain

    outlined = hv.composite(thumb, ds, tiles, dims, alpha=0.5, tissue_fc=tissue, contours=True, colorbar=False)
    changed = np.any(outlined != plain, axis=2)
    ys, xs = np.nonzero(changed)
    r = ((xs - 256) / 175.0) ** 2 + ((ys - 192) / 125.0) ** 2  # the ellipse at thumbnail scale
    assert changed.sum() > 500 and np.all(np.abs(r - 1) < 0.06)


def test_slide_size_comes_from_the_tile_store(dashboard_project, monkeypatch):
    from dashboard import data_access as da

    monkeypatch.setenv("SLIDEMIL_PROJECT_ROOT", str(dashboard_project["root"]))
    project = da.get_project()
    assert da.tile_store_dims(project, "s00") == SLIDE_DIMS
    assert da.tile_store_dims(project, "missing") is None
    broken = dashboard_project["root"] / "data" / "tiles" / "broken.h5"
    broken.write_bytes(b"half a file")
    assert da.tile_store_dims(project, "broken") is None


def test_resolve_geometry_fallbacks():
    from dashboard import heatmap_view as hv

    assert hv.resolve_geometry((384, 512), slide_dims=(4096, 3072), thumb_downsample=8.0) == (8.0, (4096, 3072),
                                                                                               "recorded")
    assert hv.resolve_geometry((300, 400), thumb_downsample=2.5) == (2.5, (1000, 750), "recorded downsample")
    tiles = hv.TileScores(np.array([[0, 0], [3000, 2000]], float), 256.0, np.array([0.1, 0.2]))
    ds, dims, how = hv.resolve_geometry((384, 512), tiles=tiles)
    assert ds == pytest.approx(3256 / 512) and dims == (3256, round(384 * 3256 / 512)) and "estimated" in how
    assert hv.resolve_geometry((10, 20)) == (1.0, (20, 10), "unknown (assumed 1)")


def test_top_tiles_are_parsed_and_ranked(tmp_path):
    from dashboard import heatmap_view as hv

    for name in ("a_b_top002_score-0.5000_x10_y20.png", "a_b_top001_score+1.2500_x0_y512.png",
                 "a_b_bottom001_score-3.0000_x5_y6.png", "notes.png"):
        (tmp_path / name).write_bytes(b"")
    recs = hv.top_tiles(tmp_path)
    assert [(r["kind"], r["rank"], r["score"], r["x"], r["y"]) for r in recs] == [
        ("top", 1, 1.25, 0, 512), ("top", 2, -0.5, 10, 20), ("bottom", 1, -3.0, 5, 6)]
    assert hv.top_tiles(tmp_path / "missing") == []


def test_project_paths_follow_params_and_env(tmp_path, monkeypatch):
    from dashboard import data_access as da

    for var in ("MLFLOW_TRACKING_URI", "SLIDEMIL_MODEL_NAME", "SLIDEMIL_PARAMS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLIDEMIL_PROJECT_ROOT", str(tmp_path))
    bare = da.get_project()
    shipped = yaml.safe_load((APP.parents[1] / "params.yaml").read_text())
    assert bare.params == shipped  # the defaults are params.yaml itself, not a copy kept by hand
    assert not bare.params_found and bare.path("heatmaps.out_dir") == tmp_path / "data" / "heatmaps"
    assert bare.tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert bare.registered_model_name == "slidemil-demo" and bare.heatmap_model == "clam_sb"

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "heatmaps": {"model": "abmil", "out_dir": "out/hm"}, "tile": {"qc_dir": "/abs/qc"},
        "promote": {"model_name": "lung-subtypes"}, "data": {"classes": ["a", "b"]}}))
    p = da.get_project()
    assert p.params_found and p.heatmap_model == "abmil" and p.classes == ["a", "b"]
    assert p.path("heatmaps.out_dir") == tmp_path / "out" / "hm"
    assert p.path("tile.qc_dir") == Path("/abs/qc")
    assert p.path("tile.tissue_dir") == tmp_path / "data" / "tissue"  # defaults fill what params leave out
    assert p.get("heatmaps.render") == shipped["heatmaps"]["render"]
    assert p.get("heatmaps.top_k") == shipped["heatmaps"]["top_k"]
    assert p.registered_model_name == "lung-subtypes"
    monkeypatch.setenv("SLIDEMIL_MODEL_NAME", "from-env")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert p.registered_model_name == "from-env" and p.tracking_uri == "http://127.0.0.1:5000"
    assert da.store_problem(p.tracking_uri) is None
    assert "No MLflow store at" in da.store_problem(f"sqlite:///{tmp_path}/x.db")
