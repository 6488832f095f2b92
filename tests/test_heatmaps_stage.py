"""The `heatmaps` stage on one real slide (CMU-1 region) with two families: a record, a labelled heatmap per
family, the slide path and the copied ground truth the viewer needs, and the painted family at the top level."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import yaml

from slidemil.slides import open_slide
from slidemil.slides.tile_set import TileSetLayer
from slidemil.store import tiles_digest, write_features, write_tile_sets


@pytest.fixture
def project(tmp_path, slides_dir):
    from pipelines.common import load_params
    from slidemil.bundle import ModelBundle

    slide = slides_dir / "CMU-1-Small-Region.svs"
    with open_slide(slide) as reader:
        geometry = reader.tile_geometry(224, reader.mpp)
    px = geometry.level0_px
    ys, xs = np.mgrid[0:6, 0:8]
    coords = (np.stack([xs.ravel(), ys.ravel()], 1) * px).astype(np.int64)
    tiles = TileSetLayer("tiles", "cmu", str(slide), coords, geometry, np.ones(len(coords), np.float32))
    write_tile_sets(tmp_path / "tiles" / "cmu.h5", [tiles], resume_key="t")
    feats = np.random.default_rng(0).normal(size=(len(coords), 8)).astype(np.float32)
    write_features(tmp_path / "features" / "cmu.h5", feats, coords,
                   {"slide_id": "cmu", "encoder": "e", "tiles_digest": tiles_digest(tiles)},
                   group_attrs={"tiles_digest": tiles_digest(tiles)}, resume_key="f1")
    ring = [[0, 0], [8 * px, 0], [8 * px, 6 * px], [0, 6 * px], [0, 0]]
    (tmp_path / "tissue").mkdir()
    (tmp_path / "tissue" / "cmu.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    truth = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"name": "tumour"},
             "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [px, 0], [px, px], [0, px], [0, 0]]]}}]}
    (tmp_path / "cmu_tumour.geojson").write_text(json.dumps(truth))
    p = load_params()
    classes = p["data"]["classes"]
    (tmp_path / "manifest.csv").write_text("slide_id,case_id,path,label,tumour_geojson\n"
                                           f"cmu,c1,{slide},{classes[1]},cmu_tumour.geojson\n")
    (tmp_path / "splits.csv").write_text("fold,slide_id,split\n0,cmu,test\n")
    for family in ("abmil", "mean_pool"):
        ModelBundle.create(family, {"in_dim": 8, "n_classes": len(classes)}, classes,
                           {"name": "toy", "feature_dim": 8}, {"tile_px": 224}, metadata={"fold": 0}).save(
            tmp_path / "train" / family / "folds" / "fold0" / "bundle")
    p["validate"]["manifest_out"] = str(tmp_path / "manifest.csv")
    p["tile"].update(tiles_dir=str(tmp_path / "tiles"), tissue_dir=str(tmp_path / "tissue"))
    p["features"].update(out_dir=str(tmp_path / "features"), tile_sets=["tiles"])
    p["train"].update(splits_out=str(tmp_path / "splits.csv"), out_dir=str(tmp_path / "train"),
                      models=["abmil", "mean_pool"])
    p["heatmaps"].update(model="abmil", models=[], png_models=None, out_dir=str(tmp_path / "heatmaps"),
                         metrics=str(tmp_path / "heatmaps.json"), top_k=2)
    p["heatmaps"]["render"]["canvas_max_side"] = 512
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    return tmp_path, truth


def test_heatmaps_stage_writes_every_familys_record_and_labelled_image(project, monkeypatch):
    from pipelines import heatmaps

    root, truth = project
    monkeypatch.setenv("SLIDEMIL_PARAMS", str(root / "params.yaml"))
    assert heatmaps.main() == 0
    out = root / "heatmaps" / "cmu"
    records = {f: json.loads((out / "models" / f / "record.json").read_text()) for f in ("abmil", "mean_pool")}
    assert json.loads((out / "record.json").read_text()) == records["abmil"]  # the painted family, as before
    for family, rec in records.items():
        assert (rec["family"], rec["fold"]) == (family, 0)
        assert rec["slide_path"].endswith("CMU-1-Small-Region.svs") and rec["ground_truth"] == "ground_truth.geojson"
        assert len(rec["layers"][0]["values"]) == 48
        image = cv2.imread(str(out / "models" / family / "heatmap.png"))
        thumb = cv2.imread(str(out / "thumbnail.png"))
        assert image.shape[0] > thumb.shape[0] and image.shape[1] > thumb.shape[1]  # header lines and bar
    assert records["abmil"]["layers"][0]["kind"] == "attention"
    assert records["mean_pool"]["layers"][0]["kind"] != "attention"  # its own explanation, not abmil's
    assert np.array_equal(cv2.imread(str(out / "heatmap.png")), cv2.imread(str(out / "models/abmil/heatmap.png")))
    assert json.loads((out / "ground_truth.geojson").read_text()) == truth
    assert list((out / "top_tiles").glob("cmu_top00*.png"))


def test_png_models_limits_rendering_not_records(project, monkeypatch):
    """``png_models: []`` paints only the painted family; every family still gets its record (the viewer
    re-paints any of them), and a family that is not explained is refused by name."""
    from pipelines import heatmaps

    root, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["heatmaps"]["png_models"] = []
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("SLIDEMIL_PARAMS", str(root / "params.yaml"))
    assert heatmaps.main() == 0
    out = root / "heatmaps" / "cmu"
    assert (out / "heatmap.png").exists() and (out / "models" / "abmil" / "heatmap.png").exists()
    assert not (out / "models" / "mean_pool" / "heatmap.png").exists()
    assert json.loads((out / "models" / "mean_pool" / "record.json").read_text())["family"] == "mean_pool"
    params["heatmaps"]["png_models"] = ["clam_mb"]
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError, match="clam_mb"):
        heatmaps.main()
