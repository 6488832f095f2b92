"""CLASS-M: its losses against small hand-computed cases, the two-encoder model, tile training, tile labels
and the registered method (methods.md section C)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slidemil.models.classm_losses import (
    ema_update,
    he_triplet_loss,
    lambda_u_ramp,
    mixup,
    mixup_lambda,
    probability_mse,
    pseudo_labels,
    sharpen,
    soft_cross_entropy,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a loaded 2-core machine more threads make these small steps ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# BatchNorm of two values a < b gives -1, +1 up to eps: 1 / sqrt(1 + 1e-5)
UNIT = 1.0 / math.sqrt(1.0 + 1e-5)


def test_triplet_loss_hand_computed():
    f = torch.tensor([[0.0], [2.0]])  # z = [-1, +1]
    # same order in H and E: positive distance 0, negative distance 2 -> relu(0 - 2 + m)
    assert he_triplet_loss(f, f.clone(), margin=37.0).item() == pytest.approx(37.0 - 2 * UNIT, abs=1e-5)
    assert he_triplet_loss(f, f.clone(), margin=1.0).item() == 0.0  # margin met: no loss
    # E reversed: positive distance 2, negative 0 -> 2 + m for both tiles (batch mean, not sum)
    assert he_triplet_loss(f, f.flip(0), margin=37.0).item() == pytest.approx(37.0 + 2 * UNIT, abs=1e-5)


def test_triplet_loss_is_scale_free_and_uses_the_given_negatives():
    torch.manual_seed(0)
    f_h, f_e = torch.randn(6, 4), torch.randn(6, 4)
    base = he_triplet_loss(f_h, f_e, margin=3.0)
    assert he_triplet_loss(100 * f_h + 5, 0.5 * f_e - 1, margin=3.0).item() == pytest.approx(base.item(), rel=1e-4)
    neg = torch.tensor([3, 4, 5, 0, 1, 2])
    assert he_triplet_loss(f_h, f_e, margin=3.0, negatives=neg).item() != pytest.approx(base.item())
    with pytest.raises(ValueError, match="own negative"):
        he_triplet_loss(f_h, f_e, negatives=torch.arange(6))
    with pytest.raises(ValueError, match="at least 2"):
        he_triplet_loss(f_h[:1], f_e[:1])


def test_sharpen_and_pseudo_labels():
    got = sharpen(torch.tensor([[0.6, 0.4], [0.5, 0.5]]), 0.5)
    assert got[0].tolist() == pytest.approx([0.36 / 0.52, 0.16 / 0.52])
    assert got[1].tolist() == pytest.approx([0.5, 0.5])
    a = torch.tensor([[0.8, 0.2]], requires_grad=True)
    b = torch.tensor([[0.4, 0.6]], requires_grad=True)
    q = pseudo_labels([a, b], 0.5)  # mean (0.6, 0.4), then sharpened
    assert q[0].tolist() == pytest.approx([0.36 / 0.52, 0.16 / 0.52])
    assert not q.requires_grad
    with pytest.raises(ValueError):
        sharpen(got, 0.0)


def test_mixup_keeps_each_row_closest_to_its_first_input():
    x = torch.tensor([[0.0], [10.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    perm = torch.tensor([1, 0])
    for lam in (0.3, 0.7):  # 0.3 becomes max(0.3, 0.7) = 0.7
        (mixed,), targets = mixup([x], y, lam, perm)
        assert mixed[:, 0].tolist() == pytest.approx([3.0, 7.0])
        assert targets.tolist() == [pytest.approx([0.7, 0.3]), pytest.approx([0.3, 0.7])]
    rng = np.random.default_rng(0)
    draws = [mixup_lambda(rng, 0.75) for _ in range(200)]
    assert min(draws) >= 0.5 and max(draws) <= 1.0
    assert mixup_lambda(rng, 0.0) == 1.0  # alpha 0 = no mixing (the "without MixUp" ablation)


def test_lambda_u_ramp_is_linear_over_16_epochs():
    assert [lambda_u_ramp(t) for t in (0, 4, 8, 16, 40)] == pytest.approx([0.0, 1.875, 3.75, 7.5, 7.5])
    assert lambda_u_ramp(3, ramp_epochs=0) == 7.5


def test_soft_cross_entropy_and_probability_mse():
    logits = torch.zeros(1, 2)
    target = torch.tensor([[1.0, 0.0]])
    assert soft_cross_entropy(logits, target).item() == pytest.approx(math.log(2))
    assert probability_mse(logits, target).item() == pytest.approx(0.25)  # ((0.5)^2 + (0.5)^2) / 2
    # soft targets: CE against (0.5, 0.5) of uniform logits is still log 2
    assert soft_cross_entropy(logits, torch.tensor([[0.5, 0.5]])).item() == pytest.approx(math.log(2))


def test_ema_update():
    model, ema = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.weight.fill_(0.0)
    ema_update(ema, model, 0.9)
    assert ema.weight.item() == pytest.approx(0.1)
    with pytest.raises(ValueError):
        ema_update(ema, model, 1.0)


def test_ema_decay_warms_up():
    from slidemil.models.classm_losses import ema_decay_at

    assert ema_decay_at(0) == pytest.approx(0.1)
    assert ema_decay_at(90) == pytest.approx(0.91)
    assert ema_decay_at(10**6) == 0.999


# ---- the model ------------------------------------------------------------------------------------------
def test_one_channel_conv1_is_the_sum_of_the_rgb_kernels():
    from slidemil.encoders import build_encoder
    from slidemil.models.classm import ClassMConfig, ClassMNet

    cfg = ClassMConfig(n_classes=3, seed=4)
    net = ClassMNet(cfg)
    rgb = build_encoder("resnet18", weights="random", seed=4).backbone.conv1.weight
    assert net.enc_h.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(net.enc_h.conv1.weight, rgb.sum(1, keepdim=True))
    # a grey image through the summed kernel = the same image replicated in 3 channels through the RGB kernel
    grey = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(net.enc_h.conv1(grey), torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), rgb,
                                                                                 stride=2, padding=3))
    logits, f_h, f_e = net.eval()(grey, grey)
    assert logits.shape == (1, 3) and f_h.shape == f_e.shape == (1, 512)
    assert not torch.equal(f_h, f_e)  # the two encoders start from different random draws
    with pytest.raises(ValueError, match="views"):
        ClassMConfig(views="hsv")
    with pytest.raises(ValueError, match="unknown ClassMConfig"):
        ClassMConfig.from_dict({"lamda_c": 0.1})


# ---- tile training ---------------------------------------------------------------------------------------
def colour_tiles(n: int, rng: np.random.Generator, px: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Two separable tile classes: class 0 red-dominant, class 1 green-dominant, with noise."""
    y = np.arange(n) % 2
    rgb = rng.integers(40, 120, size=(n, px, px, 3)).astype(np.int64)
    rgb[y == 0, ..., 0] += 120
    rgb[y == 1, ..., 1] += 120
    return rgb.clip(0, 255).astype(np.uint8), y


def tile_data(n: int, seed: int, labelled: int | None = None):
    from slidemil.training.tiles import TileData

    rgb, y = colour_tiles(n, np.random.default_rng(seed))
    labels = y.copy()
    if labelled is not None:
        labels[labelled:] = -1
    return TileData(rgb, labels, [None] * n, np.array([f"g{i // 4}" for i in range(n)]))


def classm_method(**over):
    from slidemil.methods import get_method

    cfg = {"views": "rg", "input_px": 32, "crop_pad": 2, "epochs": 3, "steps_per_epoch": 4, "batch_labelled": 4,
           "batch_unlabelled": 4, "lr": 1e-3, "optimizer": "adam", **over}
    return get_method("class_m")(get_method("class_m").resolve_config(cfg, n_classes=2, feature_dims={}))


def test_train_tiles_learns_separable_tiles_and_selects_on_balanced_accuracy():
    from slidemil.training.tiles import train_tiles

    method = classm_method()
    assert method.trains_on == "tiles" and method.input_dims() == {}
    seen = []
    res = train_tiles(method, tile_data(48, 0, labelled=8), tile_data(16, 1), ["red", "green"],
                      test=tile_data(16, 2), on_epoch=lambda e, row: seen.append((e, row)))
    assert [e for e, _ in seen] == [0, 1, 2]
    assert {"train_loss_x", "train_loss_u", "train_loss_c", "val_balanced_accuracy", "val_f1_red"} <= set(seen[0][1])
    assert seen[0][1]["train_lambda_u"] < 7.5 * 3 / 16  # still ramping
    best = max(row["val_balanced_accuracy"] for _, row in seen)
    assert res.val["balanced_accuracy"] == best
    assert res.test["balanced_accuracy"] >= 0.75
    assert np.asarray(res.test_confusion).sum() == 16


def test_supervised_baseline_uses_only_labelled_tiles():
    from slidemil.training.tiles import train_tiles

    method = classm_method(batch_unlabelled=0, lambda_c=0.0, mixup_alpha=0.0, epochs=1)
    seen = []
    train_tiles(method, tile_data(24, 0, labelled=8), tile_data(8, 1), ["red", "green"],
                on_epoch=lambda e, row: seen.append(row))
    assert "train_loss_u" not in seen[0] and "train_loss_c" not in seen[0]
    assert seen[0]["train_lambda"] == 1.0  # no MixUp


# ---- tile labels ----------------------------------------------------------------------------------------
def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def annotations() -> dict:
    """QuPath-style export: a Tumor square, a Necrosis square drawn later on top of part of it, a
    MultiPolygon of Stroma, an unmapped class and a point (both ignored)."""
    def feat(geom, name):
        return {"type": "Feature", "geometry": geom,
                "properties": {"objectType": "annotation", "classification": {"name": name, "color": [1, 2, 3]}}}
    return {"type": "FeatureCollection", "features": [
        feat({"type": "Polygon", "coordinates": [square(0, 0, 400, 400)]}, "Tumor"),
        feat({"type": "Polygon", "coordinates": [square(200, 200, 400, 400)]}, "Necrosis"),
        feat({"type": "MultiPolygon", "coordinates": [[square(600, 0, 700, 100)], [square(800, 0, 900, 100)]]},
             "Stroma"),
        feat({"type": "Polygon", "coordinates": [square(0, 600, 100, 700)]}, "Ignore*"),
        feat({"type": "Point", "coordinates": [50, 50]}, "Tumor"),
    ]}


def test_tile_classes_from_qupath_annotations():
    from slidemil.store.tile_labels import TileLabelConfig, tile_classes

    cfg = TileLabelConfig(class_names=("normal", "tumour", "necrosis", "stroma"),
                          class_map={"Tumor": "tumour", "Necrosis": "necrosis", "Stroma": "stroma"})
    # tiles of 100 px: centres at (50, 50) tumour, (250, 250) necrosis on top, (350, 50) tumour, (650, 50) and
    # (850, 50) stroma (both MultiPolygon parts), (50, 650) unmapped class -> background, (1050, 50) background
    coords = np.array([[0, 0], [200, 200], [300, 0], [600, 0], [800, 0], [0, 600], [1000, 0]])
    got = tile_classes(coords, 100, annotations(), cfg)
    assert got.tolist() == [1, 2, 1, 3, 3, 0, 0]
    unannotated = TileLabelConfig(class_names=cfg.class_names, class_map=cfg.class_map, background="")
    assert tile_classes(coords, 100, annotations(), unannotated).tolist() == [1, 2, 1, 3, 3, -1, -1]
    with pytest.raises(ValueError, match="FeatureCollection"):
        tile_classes(coords, 100, {"type": "Feature"}, cfg, source="s1.geojson")
    with pytest.raises(ValueError, match="background"):
        TileLabelConfig(class_names=("a", "b"), background="normal")


def test_demo_ground_truth_gives_tile_labels():
    """The demo's tumour GeoJSON gives the same tile classes as its tumour mask at each tile centre."""
    from slidemil.demo.dataset import SyntheticSlideSpec, tumour_geojson, tumour_mask
    from slidemil.store.tile_labels import TileLabelConfig, tile_classes

    spec = SyntheticSlideSpec("s1", "c1", "subtype_a", 2048, 1536, 0.5, seed=3, tumour_fraction=0.2)
    scene = spec.scene()
    gt = tumour_geojson(scene, spec.mpp)
    mask = tumour_mask(scene, spec) > 0
    px = 128
    ys, xs = np.mgrid[0:spec.height_px // px, 0:spec.width_px // px]
    coords = np.stack([xs.ravel(), ys.ravel()], 1) * px
    cfg = TileLabelConfig(class_names=("normal", "tumour"), class_map={"Tumor": "tumour"})
    got = tile_classes(coords, px, gt, cfg)
    centre = (coords + px // 2) // spec.mask_downsample
    expected = mask[centre[:, 1], centre[:, 0]].astype(int)
    assert expected.sum() > 0 and (got == expected).mean() >= 0.98


def test_draw_labelled_fraction_and_count():
    from slidemil.store.tile_labels import draw_labelled

    classes = np.array([0] * 40 + [1] * 20 + [-1] * 10)
    lab = draw_labelled(classes, 2, fraction=0.05, seed=3)
    assert int(lab[classes == 0].sum()) == 2 and int(lab[classes == 1].sum()) == 1 and not lab[classes < 0].any()
    assert (draw_labelled(classes, 2, fraction=0.05, seed=3) == lab).all()  # seeded
    lab = draw_labelled(classes, 2, fraction=0.5, count=5, seed=0)
    assert int(lab[classes == 0].sum()) == 5 and int(lab[classes == 1].sum()) == 5


def test_tile_labels_layer_round_trip(tmp_path):
    from slidemil.store.layers import LayerError
    from slidemil.store.tile_labels import (
        TileLabelConfig,
        make_tile_labels,
        read_tile_labels,
        write_tile_labels,
    )

    cfg = TileLabelConfig(class_names=("normal", "tumour"), class_map={"Tumor": "tumour"}, count=1, seed=0)
    coords = np.array([[0, 0], [100, 0], [1000, 0], [1100, 0]])
    labels = make_tile_labels(coords, 100, annotations(), cfg)
    assert labels.class_index.tolist() == [1, 1, 0, 0] and labels.labelled.sum() == 2
    path = write_tile_labels(tmp_path / "s1.h5", labels, config=cfg, source="s1.geojson", tiles_digest="abc")
    back = read_tile_labels(path, tiles_digest="abc")
    assert back.class_names == ("normal", "tumour")
    assert back.training_labels().tolist() == np.where(labels.labelled, labels.class_index, -1).tolist()
    with pytest.raises(LayerError, match="other tiles"):
        read_tile_labels(path, tiles_digest="other")


def test_group_split_keeps_groups_whole_and_every_class_in_every_split():
    from slidemil.store.tile_labels import group_split

    groups = np.repeat([f"g{i}" for i in range(30)], 4)
    strata = np.repeat(np.arange(30) % 3, 4)
    parts = group_split(groups, strata, {"val": 0.1, "test": 0.2, "train": 0.7}, seed=0)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(120))
    seen = {name: set(groups[rows]) for name, rows in parts.items()}
    assert not (seen["train"] & seen["test"]) and not (seen["train"] & seen["val"]) and not (seen["val"] & seen["test"])
    for rows in parts.values():
        assert set(strata[rows]) == {0, 1, 2}
    assert [len(seen[n]) for n in ("val", "test", "train")] == [3, 6, 21]


# ---- H/E views, the method on a slide, bundle, GeoJSON, MLflow ---------------------------------------------
@pytest.fixture(scope="module")
def he_tiles(shared_data):
    """32 px tiles cut from a real H&E image and its fitted stain matrix."""
    import cv2

    from slidemil.stains import fit_stain_matrix, sample_pixels

    image = cv2.cvtColor(cv2.imread(str(shared_data / "images" / "tiatoolbox_target_image.png")), cv2.COLOR_BGR2RGB)
    matrix = fit_stain_matrix(sample_pixels([image], 10), name="tiatoolbox_target_image")
    tiles = [image[y:y + 128, x:x + 128] for y in range(0, 512, 128) for x in range(0, 512, 128)]
    small = np.stack([cv2.resize(t, (32, 32), interpolation=cv2.INTER_AREA) for t in tiles])
    coords = np.array([[x, y] for y in range(0, 512, 128) for x in range(0, 512, 128)], dtype=np.int64)
    return small, coords, matrix


def test_he_views_are_the_stain_separation_then_normalised(he_tiles):
    from slidemil.methods.classm import make_views
    from slidemil.models.classm import ClassMConfig
    from slidemil.stains import separate

    rgb, _, matrix = he_tiles
    cfg = ClassMConfig(input_px=32)
    h, e = make_views(rgb, [matrix] * len(rgb), cfg, augment=False)
    h8, e8 = separate(rgb, matrix)
    torch.testing.assert_close(h[:, 0], (torch.from_numpy(h8).float() / 255 - 0.5) / 0.5)
    torch.testing.assert_close(e[:, 0], (torch.from_numpy(e8).float() / 255 - 0.5) / 0.5)
    g = torch.Generator().manual_seed(0)
    ha, ea = make_views(rgb, [matrix] * len(rgb), cfg, augment=True, gen=g)
    assert ha.shape == h.shape and not torch.equal(ha, h) and not torch.equal(ha, ea)
    assert ha.min() >= -1.0 and ha.max() <= 1.0
    with pytest.raises(ValueError, match="one stain matrix per tile"):
        make_views(rgb, [None] * len(rgb), cfg, augment=False)
    with pytest.raises(ValueError, match="32 px"):
        make_views(rgb[:, :16, :16], [matrix] * len(rgb), cfg, augment=False)


def test_class_m_bundle_scores_a_slide_with_per_class_maps_and_exports_qupath_geojson(he_tiles, tmp_path):
    from slidemil.bundle import BundleSpec, ModelBundle
    from slidemil.evaluation.tile_geojson import class_map_geojson
    from slidemil.methods import SlideData, TileSetView
    from slidemil.scoring import BundleScorer

    rgb, coords, matrix = he_tiles
    method = classm_method(views="he")
    model = method.build_model().eval()
    classes = ["normal", "tumour"]
    spec = BundleSpec(method="class_m", method_config=method.config.to_dict(), class_names=classes,
                      components={"encoders": {}, "stain_fitter": {"name": "macenko_per_slide"}},
                      tile_sets=["tiles"], tiling={"tile_px": 128, "target_mpp": 0.5})
    folder = ModelBundle(spec, model.state_dict()).save(tmp_path / "bundle")
    slide = SlideData("he1", None, {"tiles": TileSetView(coords, 128)}, {}, {"tile_pixels": rgb, "stains": matrix})
    scored = BundleScorer(ModelBundle.load(folder)).score(slide)
    probs = method.tile_probabilities(model, rgb, [matrix] * len(rgb))
    assert [la.name for la in scored.layers] == [f"p_{classes[scored.label_index]}",
                                                 f"p_{classes[1 - scored.label_index]}"]
    assert all(la.kind == "probability" and not la.relative for la in scored.layers)
    by_class = {la.class_name: la.values for la in scored.layers}
    np.testing.assert_allclose(by_class["tumour"], probs[:, 1], atol=1e-5)
    assert scored.probabilities["tumour"] == pytest.approx(float(probs[:, 1].mean()), abs=1e-5)

    gj = class_map_geojson(coords, 128, probs, classes, "he1")
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(coords)
    f0 = gj["features"][0]
    assert f0["geometry"]["type"] == "Polygon" and len(f0["geometry"]["coordinates"][0]) == 5
    import uuid

    uuid.UUID(f0["id"])
    assert f0["properties"]["classification"]["name"] == classes[int(probs[0].argmax())]
    assert set(f0["properties"]["measurements"]) == {"p_normal", "p_tumour"}
    with pytest.raises(ValueError, match="stain matrix"):
        method.predict(model, SlideData("he1", None, {"tiles": TileSetView(coords, 128)}, {}, {"tile_pixels": rgb}))


def test_tile_fit_is_logged_to_mlflow(tmp_path, monkeypatch):
    import mlflow

    from slidemil.tracking import setup_tracking
    from slidemil.training.run_log import MlflowRunLog
    from slidemil.training.tiles import log_tile_fit, train_tiles

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    setup_tracking(tmp_path, "classm-test")
    method = classm_method(epochs=2, steps_per_epoch=1)
    res = train_tiles(method, tile_data(24, 0, labelled=8), tile_data(8, 1), ["red", "green"], test=tile_data(8, 2))
    log = MlflowRunLog()
    with log.run("class_m") as run_id:
        log_tile_fit(log, res, ["red", "green"], {"method": "class_m", "views": "rg"})
    run = mlflow.get_run(run_id)
    assert run.data.metrics["test_balanced_accuracy"] == pytest.approx(res.test["balanced_accuracy"])
    assert {"test_precision_red", "test_recall_green", "test_f1_red", "val_balanced_accuracy"} <= set(run.data.metrics)
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, "val_balanced_accuracy")
    assert len(history) == 2
    assert "test_confusion.json" in [a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run_id)]


# ---- the DVC stage on a tiny demo cohort -------------------------------------------------------------------
@pytest.mark.slow
def test_classm_stage_on_a_tiny_demo_cohort(tmp_path, monkeypatch):
    """9 one-slide cases (3 per label: one train, val and test case each), tiled, stains fitted, then the stage:
    a tile_labels layer per slide from the demo ground truth, an MLflow run, a loadable bundle, a class-map
    GeoJSON per test slide and the metrics report."""
    import yaml

    from pipelines import classm as stage
    from pipelines import stains as stains_stage
    from slidemil.bundle import ModelBundle
    from slidemil.data.manifest import read_manifest
    from slidemil.data.tile_batch import SlideJob, TileOutputs, tile_slides
    from slidemil.demo.dataset import generate_demo_dataset
    from slidemil.methods.classm import slide_data
    from slidemil.scoring import BundleScorer
    from slidemil.slides import open_slide
    from slidemil.slides.tiling import TilingParams
    from slidemil.slides.tissue import TissueParams
    from slidemil.stains.layer import read_stains
    from slidemil.store import SlideStore
    from slidemil.store.tile_labels import read_tile_labels

    generate_demo_dataset(tmp_path / "demo", n_cases=9, slides_per_case=1, width_um=500, height_um=400, seed=5,
                          workers=1, progress=False)
    manifest = read_manifest(tmp_path / "demo" / "manifest.csv")
    jobs = [SlideJob(r.slide_id, r.abs_path) for r in manifest.itertuples()]
    tile_slides(jobs, TilingParams(tile_px=128, target_mpp=0.5), TissueParams(a_t=0.05, a_h=0.05),
                TileOutputs(tmp_path / "tiles", tmp_path / "tissue", tmp_path / "qc"), workers=1, progress=False)
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["validate"]["manifest_out"] = str(tmp_path / "demo" / "manifest.csv")
    params["tile"]["tiles_dir"] = str(tmp_path / "tiles")
    params["features"]["out_dir"] = str(tmp_path / "features")
    params["stains"].update(out_dir=str(tmp_path / "stains"), summary=str(tmp_path / "stains.json"))
    params["train"]["splits"].update(folds=1, val_frac=0.34, test_frac=0.34)
    params["classm"].update(labels_dir=str(tmp_path / "tile_labels"), out_dir=str(tmp_path / "classm"),
                            metrics=str(tmp_path / "classm.json"), max_train_tiles=24)
    params["classm"]["model"].update(epochs=2, steps_per_epoch=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("SLIDEMIL_PARAMS", str(tmp_path / "params.yaml"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert stains_stage.main() == 0
    assert stage.main() == 0

    report = json.loads((tmp_path / "classm.json").read_text())
    assert {r["split"] for r in report["slides"].values()} == {"train", "val", "test"}
    assert 0.0 <= report["test"]["balanced_accuracy"] <= 1.0 and report["seconds"]["total"] > 0
    tumour_slides = set(manifest.loc[manifest.label != "normal", "slide_id"])
    for sid in manifest.slide_id:
        labels = read_tile_labels(tmp_path / "tile_labels" / f"{sid}.h5")
        if sid not in tumour_slides:
            assert (labels.class_index == 0).all()  # normal slides have no tumour annotation
    assert sum((read_tile_labels(tmp_path / "tile_labels" / f"{s}.h5").class_index == 1).sum()
               for s in tumour_slides) > 0
    bundle = ModelBundle.load(tmp_path / "classm" / "bundle")
    scorer = BundleScorer(bundle)
    assert scorer.method.name == "class_m"
    store = SlideStore(tmp_path / "tiles", tmp_path / "features")
    test_ids = [s for s, r in report["slides"].items() if r["split"] == "test"]
    for sid in test_ids:
        gj = json.loads((tmp_path / "classm" / "geojson" / f"{sid}.geojson").read_text())
        assert len(gj["features"]) == report["slides"][sid]["tiles"]
        assert set(gj["features"][0]["properties"]["measurements"]) == {"p_normal", "p_tumour"}
        # the scoring path (what heatmaps / serving call) gives the same tumour map as the exported GeoJSON
        tiles = store.tile_set(sid)
        with open_slide(tiles.slide_path, slide_id=sid, mpp=tiles.geometry.slide_mpp) as reader:
            data = slide_data(reader, tiles, read_stains(tmp_path / "stains" / f"{sid}.h5"),
                              scorer.method.config.input_px)
        scored = scorer.score(data)
        exported = [f["properties"]["measurements"]["p_tumour"] for f in gj["features"]]
        np.testing.assert_allclose(scored.layer("p_tumour").values, exported, atol=1e-5)
