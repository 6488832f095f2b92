"""Bundle format 2: schema and cross-field checks on save and load, the format-1 message and its upgrade."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slidemil.bundle import BundleError, ModelBundle
from slidemil.cli import main as cli_main
from slidemil.scoring import BundleScorer, slide_from_features

ENC = {"name": "toy", "weights": "random", "feature_dim": 8}
TILING = {"tile_px": 224, "target_mpp": 0.5, "multiscale_factor": 4}


def _bundle(method="abmil", config=None, classes=("a", "b"), encoder=ENC) -> ModelBundle:
    torch.manual_seed(0)
    return ModelBundle.create(method, config or {"in_dim": 8, "n_classes": len(classes)}, list(classes),
                              dict(encoder), TILING)


def test_round_trip_and_predictions(tmp_path):
    bundle = _bundle("clam_mb", {"in_dim": 8, "n_classes": 3, "k_sample": 2}, ("x", "y", "z"))
    folder = bundle.save(tmp_path / "b")
    meta = json.loads((folder / "bundle.json").read_text())
    assert meta["format"] == 2 and meta["method"] == "clam_mb"
    assert meta["components"]["encoders"]["tiles"]["feature_dim"] == 8
    loaded = ModelBundle.load(folder)
    slide = slide_from_features("s", np.random.default_rng(0).normal(size=(12, 8)), np.zeros((12, 2)), 224)
    a, b = BundleScorer(bundle).score(slide), BundleScorer(loaded).score(slide)
    assert a.probabilities == pytest.approx(b.probabilities, abs=1e-7)
    assert a.primary.kind == "attention" and len(a.primary.values) == 12


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"classes": ("a", "a")}, "class_names must be unique"),
    ({"config": {"in_dim": 8, "n_classes": 3}}, "3 classes but class_names lists 2"),
    ({"encoder": {**ENC, "feature_dim": 16}}, "gives 16-d features, the model expects 8"),
    ({"method": "transmil"}, "unknown method 'transmil'"),
    ({"config": {"in_dim": 8, "n_classes": 2, "k_sample": 4}}, "unknown MILConfig key"),
])
def test_cross_field_checks(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _bundle(**kwargs)


def test_load_refuses_edited_and_old_bundles(tmp_path):
    folder = _bundle().save(tmp_path / "b")
    meta = json.loads((folder / "bundle.json").read_text())
    meta["components"]["encoders"]["tiles"]["feature_dim"] = 4
    (folder / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"invalid bundle.json: .*gives 4-d features"):
        ModelBundle.load(folder)
    meta["components"]["encoders"] = {"parents": meta["components"]["encoders"]["tiles"]}
    (folder / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="no encoder for that tile set"):
        ModelBundle.load(folder)


def _format1(folder, model_name="abmil"):
    """A bundle as slidemil 0.1 wrote it (CLAM keys in every model's config)."""
    torch.manual_seed(0)
    from slidemil.methods import build_method

    state = build_method(model_name, {"in_dim": 8, "n_classes": 2}).build_model().state_dict()
    folder.mkdir(parents=True)
    (folder / "bundle.json").write_text(json.dumps({
        "format": 1, "model_name": model_name,
        "model_config": {"in_dim": 8, "n_classes": 2, "size": "small", "dropout": 0.25, "k_sample": 8},
        "class_names": ["a", "b"], "encoder": {"name": "toy", "weights": "random", "feature_dim": 8},
        "tiling": {"tile_px": 224, "target_mpp": 0.5}, "tissue": {}, "heatmap": {}, "metadata": {"fold": 1}}))
    torch.save(state, folder / "weights.pt")
    return state


def test_format1_gets_a_clear_message_and_upgrades(tmp_path, capsys):
    state = _format1(tmp_path / "old")
    with pytest.raises(BundleError, match="format-1 bundle .* `slidemil bundle-upgrade"):
        ModelBundle.load(tmp_path / "old")
    assert cli_main(["bundle-upgrade", str(tmp_path / "old"), "--out", str(tmp_path / "new")]) == 0
    new = ModelBundle.load(tmp_path / "new")
    assert new.method_name == "abmil" and "k_sample" not in new.spec.method_config
    assert new.metadata["upgraded_from_format"] == 1 and new.metadata["fold"] == 1
    assert all(torch.equal(state[k], new.state_dict[k]) for k in state)
    assert cli_main(["bundle-upgrade", str(tmp_path / "new")]) == 2  # already format 2: a readable refusal
    assert "is not a format-1 bundle (format 2)" in capsys.readouterr().err


def test_methods_command_lists_the_registry(capsys):
    assert cli_main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("clam_sb", "clam_mb", "abmil", "mean_pool", "max_pool"):
        assert f"{name}:" in out
    assert "k_sample=8" in out and "layers:     tile_set:tiles, features:tiles" in out
    assert cli_main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert "k_sample" in by_name["clam_sb"]["config"] and "k_sample" not in by_name["abmil"]["config"]
    assert by_name["mean_pool"]["monitor"] == "val_loss (min)"


def test_checkpoint_encoder_travels_with_the_bundle(tmp_path):
    """A pipeline-trained encoder (a checkpoint path) is copied into the bundle, so the bundle rebuilds the
    identical encoder after the original file is gone (another machine, an MLflow download)."""
    from slidemil.encoders.registry import build_encoder

    start = build_encoder("resnet18", "random", seed=3)
    ckpt = tmp_path / "pretrain" / "encoder.pt"
    ckpt.parent.mkdir()
    torch.save(start.backbone.state_dict(), ckpt)
    enc = build_encoder("resnet18", str(ckpt))
    bundle = _bundle(config={"in_dim": 512, "n_classes": 2},
                     encoder={"name": "resnet18", "weights": str(ckpt), "weights_id": enc.weights_id,
                              "feature_dim": 512})
    folder = bundle.save(tmp_path / "b")
    meta = json.loads((folder / "bundle.json").read_text())
    rel = meta["components"]["encoders"]["tiles"]["weights"]
    assert rel.startswith("encoders/") and (folder / rel).is_file()
    ckpt.unlink()
    loaded = ModelBundle.load(folder)
    rebuilt = build_encoder("resnet18", loaded.encoder.weights)
    assert rebuilt.weights_id == enc.weights_id
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(rebuilt(x), start(x))
    assert json.loads((loaded.save(tmp_path / "again") / "bundle.json").read_text())[
        "components"]["encoders"]["tiles"]["weights"] == rel  # saving a loaded bundle ships it again
def test_calibration_field_old_bundles_and_calibrated_scores(tmp_path):
    """A bundle without ``calibration`` (written before it) loads with T = 1; a temperature changes the served
    probabilities but not the class, and the raw ones stay available."""
    from slidemil.bundle import CalibrationSpec
    from slidemil.evaluation.calibration import apply_temperature

    folder = _bundle(classes=("a", "b", "c"), config={"in_dim": 8, "n_classes": 3}).save(tmp_path / "old")
    meta = json.loads((folder / "bundle.json").read_text())
    del meta["calibration"]
    (folder / "bundle.json").write_text(json.dumps(meta))
    old = ModelBundle.load(folder)
    assert old.spec.calibration.temperature == 1.0 and old.spec.calibration.threshold is None
    slide = slide_from_features("s", np.random.default_rng(0).normal(size=(12, 8)), np.zeros((12, 2)), 224)
    plain = BundleScorer(old).score(slide)
    assert plain.probabilities == plain.raw_probabilities

    old.spec.calibration = CalibrationSpec(temperature=3.0, threshold=0.4, negative_class="a")
    hot = BundleScorer(ModelBundle.load(old.save(tmp_path / "new"))).score(slide)
    assert hot.raw_probabilities == pytest.approx(plain.probabilities, abs=1e-7)
    expected = apply_temperature([list(plain.probabilities.values())], 3.0)[0]
    assert list(hot.probabilities.values()) == pytest.approx(list(expected), abs=1e-7)
    assert max(hot.probabilities.values()) < max(plain.probabilities.values()) and hot.label == plain.label
    assert hot.record()["raw_probabilities"] == hot.raw_probabilities

    meta = json.loads((tmp_path / "new" / "bundle.json").read_text())
    meta["calibration"]["negative_class"] = "tumour"
    (tmp_path / "new" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="negative_class 'tumour' is not one of"):
        ModelBundle.load(tmp_path / "new")
