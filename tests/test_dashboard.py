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
            mlflow.log_params({f"method.{k}": v for k, v in MODEL_CFG[model].items()})
            mlflow.log_params({"train.lr": 2e-4, "train.max_epochs": 40, "encoder.tiles.name": "resnet50_trunc",
                               "encoder.tiles.weights": "random", "tiling.target_mpp": 0.5, "n_folds": N_FOLDS})
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


def _probability_layer(scores: np.ndarray, class_name: str):
    """An absolute 0-1 layer beside the attention one (no registered method emits one yet; CLAM-MB-style
    per-tile class probabilities will)."""
    from slidemil.methods import ScoreLayer

    return ScoreLayer("tile probability", "tiles", 1.0 / (1.0 + np.exp(-6.0 * (scores - 0.5))), "probability",
                      class_name, "per-tile probability of the predicted class")


def _write_stage_outputs(out: Path, scored, record_extra: dict, thumb: np.ndarray, fc: dict,
                         params, primary: bool = True) -> dict:
    """What the heatmaps stage writes for one slide and family: ``models/<family>/`` heatmap.png and record.json;
    for the painted family also heatmap.png, thumbnail.png, tiles.geojson, top tiles named as ``save_top_tiles``
    names them, and record.json = ``ScoredSlide.record()`` + the stage's extra keys."""
    from slidemil.evaluation.heatmap import render_score_layer
    from slidemil.evaluation.tile_geojson import tiles_to_geojson
    from slidemil.slides.masks import rasterize_polygons
    from slidemil.utils.atomic import write_json_atomic, write_png_atomic
    from slidemil.utils.geojson import write_geojson

    layer, view = scored.primary, scored.tile_sets["tiles"]
    tissue = rasterize_polygons(fc, thumb.shape[:2], THUMB_DS)
    model = f"{record_extra['family']} fold {record_extra['fold']}"
    title = f"{scored.slide_id} | {model} | {scored.label}: {layer.name}"
    image = render_score_layer(thumb, THUMB_DS, layer, view.coords, view.level0_px, params, tissue_mask=tissue,
                               mask_downsample=THUMB_DS, slide_dims=SLIDE_DIMS, title=title, model=model)
    record = {**scored.record(3), **record_extra}
    family_dir = out / "models" / record_extra["family"]
    write_png_atomic(family_dir / "heatmap.png", image)
    write_json_atomic(family_dir / "record.json", record)
    if not primary:
        return record
    write_png_atomic(out / "heatmap.png", image)
    write_png_atomic(out / "thumbnail.png", thumb)
    write_geojson(out / "tiles.geojson", tiles_to_geojson(view.coords, view.level0_px,
                                                          {la.name: la.values for la in scored.layers},
                                                          scored.slide_id))
    side = round(TILE_L0 / THUMB_DS)
    for t in record["top_tiles"]:
        x, y = int(t["x"] / THUMB_DS), int(t["y"] / THUMB_DS)
        tile = cv2.resize(thumb[y:y + side, x:x + side], (96, 96), interpolation=cv2.INTER_NEAREST)
        name = f"{scored.slide_id}_top{t['rank']:03d}_score{t['score']:+.4f}_x{t['x']}_y{t['y']}.png"
        write_png_atomic(out / "top_tiles" / name, tile)
    write_json_atomic(out / "record.json", record)
    return record


def _slide_image(thumb: np.ndarray, path: Path) -> Path:
    """A level-0 slide file (JPEG, read by slidemil's plain-image backend) whose fine texture only shows when
    zoomed in: the thumbnail scaled up plus a 6-px checker pattern."""
    big = cv2.resize(thumb, SLIDE_DIMS, interpolation=cv2.INTER_LINEAR).astype(np.int16)
    yy, xx = np.mgrid[0:SLIDE_DIMS[1], 0:SLIDE_DIMS[0]]
    big += (((xx // 6 + yy // 6) % 2) * 40 - 20)[..., None].astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.clip(big, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 90])
    return path


def _circle_fc(cx: float, cy: float, r: float) -> dict:
    pts = cv2.ellipse2Poly((int(cx), int(cy)), (int(r), int(r)), 0, 0, 360, 15)
    ring = [[int(x), int(y)] for x, y in pts] + [[int(pts[0][0]), int(pts[0][1])]]
    return {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {
        "type": "Polygon", "coordinates": [ring]}, "properties": {"objectType": "annotation", "name": "tumour"}}]}


def _write_slides(root: Path, facts: dict) -> None:
    """Tissue and QC for three slides; heatmaps-stage outputs for s00 (attention + probability layers, a slide
    file, ground truth, and an abmil record beside clam_sb's) and s01 (clam_sb attention only, no slide file:
    the viewer falls back to the thumbnail). Predictions are each family's test predictions, so index.csv,
    record.json and predictions.csv agree as they do after `dvc repro`."""
    from slidemil.evaluation.heatmap import HeatmapParams
    from slidemil.methods import ScoreLayer, TileSetView
    from slidemil.scoring import ScoredSlide
    from slidemil.slides.geometry import TileGeometry
    from slidemil.store import TileSetLayer, write_tile_sets
    from slidemil.utils.atomic import write_png_atomic

    data = root / "data"
    for d in ("tissue", "qc", "tiles", "heatmaps"):
        (data / d).mkdir(parents=True, exist_ok=True)
    xs, ys = np.meshgrid(np.arange(0, SLIDE_DIMS[0], TILE_L0), np.arange(0, SLIDE_DIMS[1], TILE_L0))
    grid = np.stack([xs.ravel(), ys.ravel()], 1)
    centre = grid + TILE_L0 / 2
    inside = ((centre[:, 0] - 2048) / 1400) ** 2 + ((centre[:, 1] - 1536) / 1000) ** 2 <= 1
    coords = grid[inside]
    params = HeatmapParams(canvas_max_side=2048, cmap="viridis", alpha=0.5)
    clam = facts["models"]["clam_sb"]["preds"]
    abmil = facts["models"]["abmil"]["preds"]
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
        p = clam[(clam.slide_id == slide) & (clam.split == "test")].iloc[0]
        pred = CLASSES[int(p["pred"])]
        layers = [ScoreLayer("attention", "tiles", scores, "attention", pred, "ABMIL attention weights")]
        if k == 0:
            layers.append(_probability_layer(scores, pred))
        scored = ScoredSlide(slide, {c: float(p[f"prob_{c}"]) for c in CLASSES}, pred, int(p["pred"]), layers,
                             {"tiles": TileSetView(coords.astype(np.int64), TILE_L0)})
        extra = {"fold": int(p["fold"]), "family": "clam_sb", "true_label": CLASSES[int(p["label"])],
                 "slide_width": SLIDE_DIMS[0], "slide_height": SLIDE_DIMS[1], "thumb_downsample": THUMB_DS,
                 "slide_path": "", "ground_truth": None}
        if k == 0:
            extra["slide_path"] = str(_slide_image(thumb, data / "slides" / f"{slide}.jpg"))
            extra["ground_truth"] = "ground_truth.geojson"
            (data / "heatmaps" / slide).mkdir(parents=True, exist_ok=True)
            (data / "heatmaps" / slide / "ground_truth.geojson").write_text(json.dumps(_circle_fc(*hot, 420)))
        facts.setdefault("records", {})[slide] = _write_stage_outputs(data / "heatmaps" / slide, scored, extra,
                                                                      thumb, fc, params)
        if k == 0:  # abmil explains s00 too, with its attention elsewhere
            a = abmil[(abmil.slide_id == slide) & (abmil.split == "test")].iloc[0]
            a_scores = np.exp(-((coords + TILE_L0 / 2 - np.array([1400.0, 1900.0])) ** 2).sum(1) / (2 * 400.0**2))
            a_pred = CLASSES[int(a["pred"])]
            a_scored = ScoredSlide(slide, {c: float(a[f"prob_{c}"]) for c in CLASSES}, a_pred, int(a["pred"]),
                                   [ScoreLayer("attention", "tiles", a_scores, "attention", a_pred, "ABMIL attention")],
                                   {"tiles": TileSetView(coords.astype(np.int64), TILE_L0)})
            facts.setdefault("abmil_records", {})[slide] = _write_stage_outputs(
                data / "heatmaps" / slide, a_scored, {**extra, "family": "abmil", "fold": int(a["fold"])}, thumb,
                fc, params, primary=False)
            facts.setdefault("abmil_scores", {})[slide] = a_scores
        rows.append({"slide_id": slide, "fold": int(p["fold"]), "label": CLASSES[int(p["label"])], "pred": pred,
                     **{f"prob_{c}": p[f"prob_{c}"] for c in CLASSES}, "n_tiles": len(coords), "top_tiles": 3,
                     "score_layer": layers[0].name, "score_kind": layers[0].kind, "slide_width": SLIDE_DIMS[0],
                     "slide_height": SLIDE_DIMS[1], "thumb_downsample": THUMB_DS,
                     "localisation_auroc": 0.8734 if k == 0 else np.nan})
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
                     "render": {"canvas_max_side": 2048, "blur_sigma_px": 0, "blur_tiles": 0.5, "cmap": "viridis",
                                "alpha": 0.5}},
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
    assert clam["method.dropout"] == "0.25"

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
    diff = next(d for d in _frames(at) if d.index.name == "param" or "method.dropout" in d.index)
    assert "method.dropout" in diff.index and "method.k_sample" in diff.index
    assert "train.lr" not in diff.index and "encoder.tiles.name" not in diff.index

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
    idx = f["index"].set_index("slide_id")
    row = idx.loc["s00"]
    model_box, slide_box = at.selectbox(key="model"), at.selectbox(key="slide")
    assert model_box.value == "clam_sb" and slide_box.value == "s00"
    # the picker says what each slide is, not just its id
    assert slide_box.options == [
        f"{s} — true {r['label']}, predicted {r['pred']} ({r[f'prob_{r.pred}']:.2f})" for s, r in idx.iterrows()]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"True label": row["label"], "Predicted": row["pred"]}
    assert any(s.value == "Correct (clam_sb fold 0 model, test split)" for s in at.success)
    probs = _frames(at)[1].set_index("class")["probability"]
    assert probs.to_dict() == pytest.approx({c: row[f"prob_{c}"] for c in CLASSES})

    # the layer choices are the record's, the first painted by default
    layer_box = at.selectbox(key="layer")
    assert layer_box.options == [la["name"] for la in f["records"]["s00"]["layers"]] == ["attention",
                                                                                          "tile probability"]
    assert layer_box.value == "attention"
    text = _texts(at)
    assert f"{len(f['coords'])} tiles · 8.00 level-0 px per thumbnail px" in text
    assert "localisation AUROC (clam_sb): 0.873" in text
    assert f"Layer `attention`: attention for class {row['pred']}. Colours: within-slide percentile" in text
    champ = f["models"]["clam_sb"]["version"]
    assert f"The API serves `slidemil-demo` v{champ} (@champion, run `clam_sb`)" in text
    captions = _image_captions(at)
    assert captions[0] == "s00: heatmap of clam_sb fold 0, layer attention: opacity 0.50, viridis, smoothing 0.5 tiles"
    best = np.sort(f["scores"]["s00"])[::-1][:3]
    assert [c.split(" · ")[0] for c in captions[1:4]] == ["#1", "#2", "#3"]
    assert [float(c.split("score ")[1].split(" ")[0]) for c in captions[1:4]] == pytest.approx(best, abs=6e-4)
    assert "Top tiles by attention (clam_sb fold 0)" in text

    first = at.image[0].proto.imgs[0].url
    at.selectbox(key="layer").set_value("tile probability").run()
    _no_exception(at)
    text = _texts(at)
    assert "Layer `tile probability`: probability for class" in text and "Colours: probability 0-1" in text
    assert "layer tile probability" in _image_captions(at)[0] and at.image[0].proto.imgs[0].url != first

    at.slider(key="alpha").set_value(0.8).run()
    at.selectbox(key="cmap").set_value("magma").run()
    at.slider(key="blur").set_value(1.0).run()
    at.toggle(key="contours").set_value(True).run()
    _no_exception(at)
    assert "opacity 0.80, magma, smoothing 1 tiles" in _image_captions(at)[0]

    # the misclassified slide has one layer: nothing to choose
    at.selectbox(key="slide").set_value("s01").run()
    _no_exception(at)
    r1 = idx.loc["s01"]
    assert {m.label: m.value for m in at.metric}["Predicted"] == r1["pred"] != r1["label"]
    assert any("Misclassified (clam_sb fold 0 model" in e.value for e in at.error)
    assert "layer" not in [sb.key for sb in at.selectbox]
    assert "layer attention" in _image_captions(at)[0]

    # abmil did not explain s01: its prediction (from its predictions.csv) but no borrowed clam_sb heatmap
    at.selectbox(key="model").set_value("abmil").run()
    _no_exception(at)
    ab = f["models"]["abmil"]["preds"]
    ab = ab[(ab.slide_id == "s01") & (ab.split == "test")].sort_values("fold").iloc[0]
    assert {m.label: m.value for m in at.metric} == {"True label": CLASSES[ab["label"]],
                                                     "Predicted": CLASSES[ab["pred"]]}
    assert any("No heatmap of `abmil` for `s01`" in i.value for i in at.info)
    assert not any(c.startswith("s01: heatmap of") for c in _image_captions(at))


def test_worklist_filters_and_names_the_model(dashboard_project, monkeypatch):
    f = dashboard_project
    at = _app(f["root"], monkeypatch, "slides")
    table = _frames(at)[0]
    idx = f["index"].set_index("slide_id")
    assert list(table.columns) == ["slide", "true label", "predicted", "confidence", "correct", "model"]
    assert list(table["slide"]) == ["s00", "s01"] and list(table["correct"]) == [True, False]
    assert list(table["model"]) == [f"clam_sb fold {int(idx.loc[s, 'fold'])}" for s in ("s00", "s01")]
    assert table["confidence"].tolist() == pytest.approx([idx.loc[s, f"prob_{idx.loc[s, 'pred']}"]
                                                          for s in ("s00", "s01")])
    assert "2 of 2 slides" in _texts(at)

    at.toggle(key="misclassified").set_value(True).run()
    _no_exception(at)
    assert list(_frames(at)[0]["slide"]) == ["s01"] and "1 of 2 slides" in _texts(at)
    assert at.selectbox(key="slide").value == "s01" and len(at.selectbox(key="slide").options) == 1
    at.toggle(key="misclassified").set_value(False).run()
    at.multiselect(key="true_class").set_value([idx.loc["s00", "label"]]).run()
    _no_exception(at)
    assert list(_frames(at)[0]["slide"]) == ["s00"]
    at.multiselect(key="true_class").set_value([]).run()

    # another family: its own predictions, confidences and fold labels
    at.selectbox(key="model").set_value("abmil").run()
    _no_exception(at)
    ab = f["models"]["abmil"]["preds"]
    ab = ab[ab.split == "test"].sort_values("fold").drop_duplicates("slide_id").set_index("slide_id")
    table = _frames(at)[0].set_index("slide")
    for s in ("s00", "s01"):
        pred = CLASSES[int(ab.loc[s, "pred"])]
        assert table.loc[s, "predicted"] == pred and table.loc[s, "model"] == f"abmil fold {int(ab.loc[s, 'fold'])}"
        assert table.loc[s, "confidence"] == pytest.approx(ab.loc[s, f"prob_{pred}"])


def test_model_choice_paints_that_models_heatmap_and_side_by_side(dashboard_project, monkeypatch):
    f = dashboard_project
    at = _app(f["root"], monkeypatch, "slides")
    clam_url = at.image[0].proto.imgs[0].url
    assert at.selectbox(key="compare").options == ["(none)", "abmil"]
    at.selectbox(key="model").set_value("abmil").run()
    _no_exception(at)
    captions = _image_captions(at)
    assert captions[0].startswith("s00: heatmap of abmil fold 0, layer attention")
    assert at.image[0].proto.imgs[0].url != clam_url
    assert "Top tiles by attention (abmil fold 0)" in _texts(at)

    at.selectbox(key="compare").set_value("clam_sb").run()
    _no_exception(at)
    heatmaps = [c for c in _image_captions(at) if c.startswith("s00: heatmap of")]
    assert [c.split(",")[0] for c in heatmaps] == ["s00: heatmap of abmil fold 0", "s00: heatmap of clam_sb fold 0"]
    assert "`abmil` and `clam_sb` on s00" in _texts(at)


def test_slide_without_record_says_to_rerun_the_stage(tmp_path, monkeypatch):
    """A heatmaps folder from before record.json: a readable message and the stage's own image."""
    from slidemil.utils.atomic import write_png_atomic

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"classes": CLASSES},
                                                          "heatmaps": {"out_dir": "data/heatmaps"}}))
    out = tmp_path / "data" / "heatmaps"
    write_png_atomic(out / "old" / "heatmap.png", _thumbnail(0))
    pd.DataFrame([{"slide_id": "old", "fold": 1, "label": "normal", "pred": "subtype_a", "prob_normal": 0.05,
                   "prob_subtype_a": 0.91, "prob_subtype_b": 0.04, "n_tiles": 10, "top_tiles": 3}]).to_csv(
        out / "index.csv", index=False)
    at = _app(tmp_path, monkeypatch, "slides")
    assert at.selectbox(key="slide").options == ["old — true normal, predicted subtype_a (0.91)"]
    infos = [i.value for i in at.info]
    assert any("it has no `record.json`" in i and "re-run `dvc repro heatmaps`" in i for i in infos), infos
    assert len(at.image) == 1  # the stage's heatmap.png, no top-tile gallery
    assert "layer" not in [sb.key for sb in at.selectbox] and not at.slider

    (out / "old" / "record.json").write_text(json.dumps({"slide_id": "old", "layers": []}))  # a foreign file
    at.run()
    _no_exception(at)
    assert any("record.json has no 'probabilities'" in i.value and "dvc repro heatmaps" in i.value for i in at.info)


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
    record = hv.SlideRecord.from_dict(json.loads((folder / "record.json").read_text()))
    view = record.tile_sets["tiles"]
    assert view.level0_px == TILE_L0 and np.array_equal(view.coords, dashboard_project["coords"])
    assert np.allclose(record.primary.values, dashboard_project["scores"]["s00"])
    assert (record.family, record.slide_dims, record.thumb_downsample) == ("clam_sb", SLIDE_DIMS, THUMB_DS)
    tissue = json.loads((dashboard_project["root"] / "data" / "tissue" / "s00.geojson").read_text())
    same = hv.composite(thumb, record, record.primary, cmap="viridis", alpha=0.5, tissue_fc=tissue)
    assert np.array_equal(same, stage)  # the stage's settings reproduce its image exactly, title and legend too

    plain = hv.composite(thumb, record, record.primary, alpha=0.5, tissue_fc=tissue, legend=False)
    stronger = hv.composite(thumb, record, record.primary, alpha=0.9, tissue_fc=tissue, legend=False)
    painted = np.any(plain != thumb, axis=2)
    assert 0.2 < painted.mean() < 0.6  # colour only on tiles inside the tissue
    assert not np.any(plain[~painted] != thumb[~painted])
    # more opacity: painted pixels move away from the thumbnail
    d_plain = np.abs(plain.astype(int) - thumb)[painted].mean()
    d_strong = np.abs(stronger.astype(int) - thumb)[painted].mean()
    assert d_strong > 1.5 * d_plain

    outlined = hv.composite(thumb, record, record.primary, alpha=0.5, tissue_fc=tissue, contours=True, legend=False)
    changed = np.any(outlined != plain, axis=2)
    ys, xs = np.nonzero(changed)
    r = ((xs - 256) / 175.0) ** 2 + ((ys - 192) / 125.0) ** 2  # the ellipse at thumbnail scale
    assert changed.sum() > 500 and np.all(np.abs(r - 1) < 0.06)


@pytest.fixture(scope="module")
def toy_scored(tmp_path_factory):
    """A real ScoredSlide: the toy ABMIL bundle scoring random features on a 4 x 3 tile grid."""
    from slidemil.bundle import ModelBundle
    from slidemil.scoring import BundleScorer, slide_from_features

    bundle = ModelBundle.load(_tiny_bundle(tmp_path_factory.mktemp("toy") / "bundle", "toy"))
    xs, ys = np.meshgrid(np.arange(4) * TILE_L0, np.arange(3) * TILE_L0)
    coords = np.stack([xs.ravel(), ys.ravel()], 1)
    feats = np.random.default_rng(0).normal(size=(len(coords), 8)).astype(np.float32)
    return BundleScorer(bundle).score(slide_from_features("toy", feats, coords, TILE_L0))


def _record(scored, **extra) -> dict:
    return json.loads(json.dumps({**scored.record(3), "fold": 2, "family": "abmil", "true_label": "normal",
                                  "slide_width": 4 * TILE_L0, "slide_height": 3 * TILE_L0, "thumb_downsample": 8.0,
                                  **extra}))


def test_record_of_a_scored_bundle_is_parsed(toy_scored):
    from dashboard import heatmap_view as hv

    rec = hv.SlideRecord.from_dict(_record(toy_scored))
    assert [la.name for la in rec.layers] == [la.name for la in toy_scored.layers] == ["attention"]
    assert rec.primary.kind == "attention" and rec.primary.relative and rec.primary.class_name == toy_scored.label
    assert np.allclose(rec.primary.values, toy_scored.primary.values)
    assert np.array_equal(rec.tile_sets["tiles"].coords, toy_scored.tile_sets["tiles"].coords)
    assert rec.probabilities == pytest.approx(toy_scored.probabilities) and rec.label == toy_scored.label
    assert rec.saved_top_tiles == toy_scored.top_tiles(3)
    assert (rec.fold, rec.family, rec.slide_dims) == (2, "abmil", (1024, 768))
    assert rec.stage_title(rec.primary) == f"toy | abmil fold 2 | {toy_scored.label}: attention"
    with pytest.raises(KeyError, match="no score layer 'nope'"):
        rec.layer("nope")
    broken = _record(toy_scored)
    del broken["thumb_downsample"]
    with pytest.raises(ValueError, match="record.json has no 'thumb_downsample'"):
        hv.SlideRecord.from_dict(broken)


def test_probability_layers_are_painted_on_the_absolute_scale(toy_scored):
    """Constant layers: probabilities 0.2 and 0.8 get their own colours; relative layers (ranks within the slide)
    paint a constant as the middle percentile, whatever its value."""
    from dataclasses import replace

    from dashboard import heatmap_view as hv
    from slidemil.evaluation.heatmap import colorize
    from slidemil.methods import ScoreLayer

    n = len(toy_scored.tile_sets["tiles"])
    layers = [ScoreLayer(f"{kind} {v}", "tiles", np.full(n, v), kind, "normal")
              for kind in ("probability", "attention") for v in (0.2, 0.8)]
    rec = hv.SlideRecord.from_dict(_record(replace(toy_scored, layers=layers)))
    assert [la.name for la in rec.layers] == ["probability 0.2", "probability 0.8", "attention 0.2", "attention 0.8"]
    thumb = np.full((96, 128, 3), 200, np.uint8)  # 1024 x 768 at 8 px per px: the tiles cover all of it

    def paint(name: str) -> np.ndarray:
        return hv.composite(thumb, rec, rec.layer(name), cmap="viridis", alpha=1.0, legend=False)

    def colour(v: float) -> np.ndarray:
        return colorize(np.full((1, 1), v, np.float32), "viridis")[0, 0]

    p2, p8, a2, a8 = (paint(la.name) for la in rec.layers)
    assert np.all(p2 == colour(0.2)) and np.all(p8 == colour(0.8)) and not np.array_equal(p2, p8)
    assert np.array_equal(a2, a8) and np.all(a2 == colour(0.5))
    assert "probability 0-1" in hv.colour_meaning(rec.layer("probability 0.2"))
    assert "within-slide percentile" in hv.colour_meaning(rec.layer("attention 0.2"))
    assert hv.layer_summary(rec.layer("attention 0.8")) == "attention for class normal"


def test_top_tile_images_are_found_by_rank_and_corner(tmp_path):
    from dashboard import heatmap_view as hv

    for name in ("s1_top001_score+1.2500_x0_y512.png", "s1_top002_score-0.5000_x10_y20.png", "notes.png"):
        (tmp_path / name).write_bytes(b"")
    assert hv.top_tile_image(tmp_path, "s1", {"rank": 1, "x": 0, "y": 512}) == tmp_path / (
        "s1_top001_score+1.2500_x0_y512.png")
    assert hv.top_tile_image(tmp_path, "s1", {"rank": 2, "x": 0, "y": 512}) is None  # rank 2 sits elsewhere
    assert hv.top_tile_image(tmp_path / "missing", "s1", {"rank": 1, "x": 0, "y": 512}) is None


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
        "promote": {"model_name": "lung-subtypes"}, "data": {"classes": ["a", "b"]},
        "train": {"tracking_uri": "http://team-mlflow:5000"}}))
    p = da.get_project()
    assert p.tracking_uri == "http://team-mlflow:5000"  # the stages' store (train.tracking_uri)
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


def test_slides_page_segments_toggle(dashboard_project, monkeypatch):
    """A record with the stage's ``segments`` entry (real Segments through the stage's helper) gets a toggle
    named by its real segmenter; on, it draws the tiles coloured by segment over the thumbnail."""
    from pipelines.heatmaps import segments_entry
    from slidemil.methods import SlideData, TileSetView
    from slidemil.methods.sammil import SamMILMethod
    from slidemil.segmenters.segments import from_groups

    f = dashboard_project
    path = f["root"] / "data" / "heatmaps" / "s00" / "models" / "clam_sb" / "record.json"
    original = path.read_text()
    coords = f["coords"].astype(np.int64)
    n = len(coords)
    seg = from_groups(n, [np.arange(0, n // 2), np.arange(n // 3, n - 2)], [400.0, 300.0], 1.0)
    slide = SlideData("s00", None, {"tiles": TileSetView(coords, TILE_L0)}, {"tiles": np.zeros((n, 4), np.float32)},
                      {"segments": seg})
    record = json.loads(original)
    record["segments"] = segments_entry(slide, SamMILMethod, "kmeans")
    try:
        path.write_text(json.dumps(record))
        at = _app(f["root"], monkeypatch, "slides")
        toggle = at.toggle(key="segments_layer")
        assert toggle.label == "Segments (kmeans)" and "SAM" not in toggle.label
        n_images = len(_image_captions(at))
        toggle.set_value(True).run()
        _no_exception(at)
        captions = _image_captions(at)
        assert len(captions) == n_images + 1
        assert any(c.startswith("s00: 2 segments of segmenter kmeans") for c in captions), captions
    finally:
        path.write_text(original)


def test_slides_page_msa_parent_and_child_side_by_side(dashboard_project, monkeypatch):
    """An MSA-style record (child attention on ``tiles``, parent contributions on ``parents``, as
    ``ScoredSlide.record()`` writes it) shows both maps side by side, captioned with scale and tile size."""
    from slidemil.methods import ScoreLayer

    f = dashboard_project
    path = f["root"] / "data" / "heatmaps" / "s00" / "models" / "clam_sb" / "record.json"
    original = path.read_text()
    record = json.loads(original)
    coords = f["coords"].astype(np.int64)
    parents = np.unique(coords // (2 * TILE_L0), axis=0) * 2 * TILE_L0
    rng = np.random.default_rng(0)
    record["tile_sets"]["parents"] = {"coords": parents.tolist(), "level0_px": 2 * TILE_L0}
    record["layers"] = [
        ScoreLayer("child_attention", "tiles", rng.random(len(coords)), "attention", record["label"]).to_dict(),
        ScoreLayer("parent_contribution", "parents", rng.normal(size=len(parents)), "contribution",
                   record["label"]).to_dict()]
    try:
        path.write_text(json.dumps(record))
        at = _app(f["root"], monkeypatch, "slides")
        captions = _image_captions(at)
        assert f"s00: tiles scale: child_attention, {TILE_L0} level-0 px tiles ({len(coords)} tiles)" in captions
        assert (f"s00: parents scale: parent_contribution, {2 * TILE_L0} level-0 px tiles ({len(parents)} tiles)"
                in captions), captions
    finally:
        path.write_text(original)
