"""Registry promotion both ways on a real (sqlite) MLflow store."""

from __future__ import annotations

import mlflow
import pytest
import torch

from slidemil.bundle import ModelBundle
from slidemil.mlflow_model import log_bundle
from slidemil.registry import CHALLENGER, CHAMPION, champion_version, load_bundle, register_and_promote
from slidemil.tracking import setup_tracking


def _logged_bundle(tmp_path, tag: str) -> tuple[str, str]:
    cfg = {"in_dim": 8, "n_classes": 2}
    torch.manual_seed(len(tag))
    bundle = ModelBundle.create("abmil", cfg, ["a", "b"], {"name": "toy", "feature_dim": 8}, {"tile_px": 224},
                                metadata={"tag": tag})
    folder = bundle.save(tmp_path / tag)
    with mlflow.start_run(run_name=tag) as run:
        info = log_bundle(folder)
    return info.model_uri, run.info.run_id


@pytest.fixture()
def store(tmp_path):
    setup_tracking(tmp_path, "registry-test")
    return tmp_path


def test_better_becomes_champion_worse_only_challenger(store):
    uri1, run1 = _logged_bundle(store, "first")
    r1 = register_and_promote(uri1, "demo-model", "val_auc_mean", 0.80, run_id=run1)
    assert r1.alias == CHAMPION and r1.previous_champion_version is None

    uri2, run2 = _logged_bundle(store, "better")
    r2 = register_and_promote(uri2, "demo-model", "val_auc_mean", 0.90, run_id=run2)
    assert r2.alias == CHAMPION and r2.previous_champion_version == r1.version
    assert str(champion_version("demo-model").version) == r2.version

    uri3, run3 = _logged_bundle(store, "worse")
    r3 = register_and_promote(uri3, "demo-model", "val_auc_mean", 0.85, run_id=run3)
    assert r3.alias == CHALLENGER and "<=" in r3.reason
    assert str(champion_version("demo-model").version) == r2.version
    assert str(champion_version("demo-model", CHALLENGER).version) == r3.version

    # the comparison is recorded on the run
    client = mlflow.MlflowClient()
    assert "challenger" in client.get_run(run3).data.tags["slidemil.promotion"]
    assert load_bundle("demo-model").metadata["tag"] == "better"
    assert load_bundle("demo-model", CHALLENGER).metadata["tag"] == "worse"


def test_missing_alias_is_a_clear_error(store):
    with pytest.raises(LookupError, match="no version with alias"):
        load_bundle("nothing-registered")


def test_promote_stage_names_a_run_missing_from_the_store(tmp_path, monkeypatch, caplog):
    """DVC's run cache can restore `train` outputs whose runs live in a deleted mlflow.db: promote stops with
    the cause and the command that fixes it instead of MLflow's bare "Run not found"."""
    import json

    import yaml

    from pipelines import promote

    train = tmp_path / "train" / "abmil"
    train.mkdir(parents=True)
    (train / "summary.json").write_text(json.dumps(
        {"summary": {"val": {"auc": {"mean": 0.9}}}, "parent_run_id": "0123456789abcdef0123456789abcdef"}))
    params = {"train": {"out_dir": str(tmp_path / "train"), "models": ["abmil"], "experiment": "t"},
              "promote": {"metric": "auc", "model_name": "m", "out": str(tmp_path / "promotion.json")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("SLIDEMIL_PARAMS", str(tmp_path / "params.yaml"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'fresh.db'}")
    assert promote.main() == 1
    assert "dvc repro --force train" in caplog.text and "0123456789abcdef" in caplog.text
    assert not (tmp_path / "promotion.json").exists()


def test_only_feature_bag_methods_get_a_signature_and_example():
    """sam_mil also reads segments, msa parents: a bag of tile features cannot drive them, so their logged model
    carries no input example for MLflow to fail on; the feature-bag methods keep both."""
    from slidemil.mlflow_model import signature_and_example

    def bundle(method, cfg, tile_sets=("tiles",)):
        return ModelBundle.create(method, cfg, ["a", "b"], {"name": "toy", "feature_dim": 8}, {"tile_px": 224,
                                  "multiscale_factor": 4}, tile_sets=tile_sets)

    sig, example = signature_and_example(bundle("abmil", {"in_dim": 8, "n_classes": 2}))
    assert example.shape == (4, 8) and sig is not None
    assert signature_and_example(bundle("sam_mil", {"in_dim": 8, "n_classes": 2})) == (None, None)
    msa = bundle("msa", {"in_dim": 8, "parent_dim": 8, "n_classes": 2, "d_model": 16}, ("tiles", "parents"))
    assert signature_and_example(msa) == (None, None)
