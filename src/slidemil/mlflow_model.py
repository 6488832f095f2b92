"""The bundle as an MLflow pyfunc model, so the MLflow registry can version it and any process can load it.

The logged model is self-contained for ``mlflow models serve``: it carries the slidemil source
(``code_paths``), pins the packages scoring imports to the versions installed when it was logged, and has a
signature (a bag of tile features in, one probability per class and the label out) with an input example.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from slidemil.bundle import ModelBundle

#: distributions loading a bundle and scoring a bag imports (slidemil itself travels as code_paths)
SCORING_PACKAGES = ("mlflow", "torch", "numpy", "pandas", "pydantic", "pyyaml", "scipy", "tqdm")

#: tiles in the logged input example (any number of tiles is accepted)
EXAMPLE_TILES = 4


class BundlePyfunc(mlflow.pyfunc.PythonModel):
    """``predict`` takes a bag of tile features (array [N, d] or ``{"features": ...}``) and returns one row:
    a probability column per class and ``label``; the full bundle (with tiling/encoder settings) is
    ``unwrap_python_model().bundle``."""

    def load_context(self, context) -> None:
        from slidemil.scoring import BundleScorer

        self.bundle = ModelBundle.load(context.artifacts["bundle"])
        self.scorer = BundleScorer(self.bundle)

    # The ndarray hint is one MLflow infers no schema from: the explicit signature below stays the contract,
    # and MLflow stops warning at every stage that `predict` lacks type hints.
    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        from slidemil.scoring import slide_from_features

        feats = np.asarray(model_input["features"] if isinstance(model_input, dict) else model_input, np.float32)
        slide = slide_from_features("input", feats, np.zeros((len(feats), 2), np.int64), 0)
        scored = self.scorer.score(slide, explain=False)
        return pd.DataFrame([{**scored.probabilities, "label": scored.label}])


def requirements() -> list[str]:
    """``name==version`` of each scoring package as installed now (the environment the model was tested in)."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in SCORING_PACKAGES]


def feature_bag_servable(bundle: ModelBundle) -> bool:
    """Whether a bag of ``tiles`` features alone is a complete input (not for methods that also read parents,
    segments or pixels: those are served from the slide by BentoML)."""
    from slidemil.methods import get_method

    needs = get_method(bundle.spec.method).required_layers
    return all(spec.kind in ("tile_set", "features") and spec.name == "tiles" for spec in needs)


def signature_and_example(bundle: ModelBundle):
    """The model signature and a small input example (random features of the bundle's tile dimension); both
    None for a method a feature bag cannot drive (MLflow would otherwise fail validating the example)."""
    from mlflow.models import infer_signature

    if not feature_bag_servable(bundle):
        return None, None
    dim = bundle.spec.components.encoders["tiles"].feature_dim
    example = np.random.default_rng(0).normal(size=(EXAMPLE_TILES, dim)).astype(np.float32)
    output = pd.DataFrame([{**{c: 1.0 / len(bundle.class_names) for c in bundle.class_names},
                            "label": bundle.class_names[0]}])
    return infer_signature(example, output), example


def log_bundle(bundle_dir: str | Path, name: str = "model"):
    """Log ``bundle_dir`` as a pyfunc model in the active run; returns MLflow's ModelInfo."""
    import slidemil

    signature, example = signature_and_example(ModelBundle.load(bundle_dir))
    with tempfile.TemporaryDirectory() as tmp:  # the package source without bytecode caches
        code = shutil.copytree(Path(slidemil.__file__).parent, Path(tmp) / "slidemil",
                               ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("mlflow_entry.py")),  # models from code (nothing pickled)
            artifacts={"bundle": str(bundle_dir)},
            code_paths=[str(code)],
            pip_requirements=requirements(),
            signature=signature,
            input_example=example,
        )


def load_bundle_from_uri(model_uri: str) -> ModelBundle:
    """Any MLflow model URI (``runs:/...``, ``models:/name@champion``) -> the bundle, without Lightning."""
    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri.rstrip("/"))
    candidates = list(Path(local).rglob("bundle.json"))
    if not candidates:
        raise FileNotFoundError(f"{model_uri} holds no slidemil bundle")
    return ModelBundle.load(candidates[0].parent)
