"""The bundle as an MLflow pyfunc model, so the MLflow registry can version it and any process can load it."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import numpy as np

from slidemil.bundle import ModelBundle


class BundlePyfunc(mlflow.pyfunc.PythonModel):
    """``predict`` takes a bag of tile features (array [N, d] or ``{"features": ...}``) and returns class
    probabilities; the full bundle (with tiling/encoder settings) is ``unwrap_python_model().bundle``."""

    def load_context(self, context) -> None:
        from slidemil.scoring import BundleScorer

        self.bundle = ModelBundle.load(context.artifacts["bundle"])
        self.scorer = BundleScorer(self.bundle)

    def predict(self, context, model_input, params=None):
        from slidemil.scoring import slide_from_features

        feats = np.asarray(model_input["features"] if isinstance(model_input, dict) else model_input, np.float32)
        slide = slide_from_features("input", feats, np.zeros((len(feats), 2), np.int64), 0)
        return self.scorer.score(slide, explain=False).probabilities


def log_bundle(bundle_dir: str | Path, name: str = "model"):
    """Log ``bundle_dir`` as a pyfunc model in the active run; returns MLflow's ModelInfo."""
    import slidemil

    return mlflow.pyfunc.log_model(
        name=name,
        python_model=BundlePyfunc(),
        artifacts={"bundle": str(bundle_dir)},
        pip_requirements=[f"slidemil=={slidemil.__version__}"],
    )


def load_bundle_from_uri(model_uri: str) -> ModelBundle:
    """Any MLflow model URI (``runs:/...``, ``models:/name@champion``) -> the bundle, without Lightning."""
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri.rstrip("/"))
    candidates = list(Path(local).rglob("bundle.json"))
    if not candidates:
        raise FileNotFoundError(f"{model_uri} holds no slidemil bundle")
    return ModelBundle.load(candidates[0].parent)
