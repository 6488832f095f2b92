"""The model bundle: everything needed to go from a raw slide to a prediction, and nothing from training.

A bundle is a folder with ``bundle.json`` (model name + config, class names, encoder id and weights, tiling and
tissue settings, heatmap defaults, provenance) and ``weights.pt`` (the MIL model's state dict). Serving, the
dashboard and the CLI load only this; it imports torch and the model registry, never Lightning.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from slidemil.utils.jsonable import to_jsonable

BUNDLE_FORMAT = 1


@dataclass
class ModelBundle:
    model_name: str
    model_config: dict
    class_names: list[str]
    encoder: dict  # name, weights, weights_id, feature_dim, input_px (+ seed for random weights)
    tiling: dict  # tile_px, target_mpp, stride_px, min_tissue
    tissue: dict = field(default_factory=dict)
    heatmap: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    state_dict: dict = field(default_factory=dict, repr=False)

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write atomically: a temporary sibling folder renamed into place."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            meta = {k: v for k, v in asdict(self).items() if k != "state_dict"}
            meta["format"] = BUNDLE_FORMAT
            (tmp / "bundle.json").write_text(json.dumps(to_jsonable(meta), indent=2, sort_keys=True) + "\n")
            torch.save(self.state_dict, tmp / "weights.pt")
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ModelBundle:
        folder = Path(folder)
        meta_path = folder / "bundle.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{folder} is not a slidemil model bundle (no bundle.json)")
        meta = json.loads(meta_path.read_text())
        if meta.pop("format", None) != BUNDLE_FORMAT:
            raise ValueError(f"{folder}: unsupported bundle format")
        state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        return cls(**meta, state_dict=state)

    # ---- inference ------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        from slidemil.models import build_model

        model = build_model(self.model_name, self.model_config)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def predict_features(self, features: np.ndarray | torch.Tensor, model: torch.nn.Module | None = None) -> dict:
        """Slide prediction from a bag of tile features: probabilities, label and per-tile scores."""
        model = model or self.build_model()
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        with torch.inference_mode():
            out = model(x)
        probs = out.probs.float().numpy()
        pred = int(probs.argmax())
        scores = None
        if out.attention_raw is not None:
            scores = model.tile_scores(out, pred).float().numpy()
        return {
            "probabilities": {c: float(p) for c, p in zip(self.class_names, probs, strict=True)},
            "label": self.class_names[pred],
            "label_index": pred,
            "tile_scores": scores,
        }
