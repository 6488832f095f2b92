"""The model bundle (format 2): everything needed to go from a raw slide to a prediction, nothing from training.

A bundle is a folder with ``bundle.json`` and ``weights.pt`` (the method's model state dict). ``bundle.json``
is validated by a schema (:class:`BundleSpec`) when saved and when loaded, with cross-field checks: the method
is registered and its config valid, class names unique and as many as the model's classes, an encoder for
every tile set the method reads with the feature size the model expects, tile sets the tiling can produce.
Components are listed by role (frozen or trained encoders, segmenter, stain fitter), so a method that brings
its own encoder or a segmenter needs no new bundle format. Serving, the dashboard and the CLI load only this;
it imports torch and the method registry, never Lightning. Decisions: docs/adr/0007-method-contract-and-bundle-format-2.md.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slidemil.utils.jsonable import to_jsonable

BUNDLE_FORMAT = 2


class BundleError(ValueError):
    """A bundle that cannot be used, with the reason (and the folder) in the message."""


class EncoderComponent(BaseModel):
    """The encoder that produced one tile set's features."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["frozen", "trained"] = "frozen"  # trained = produced by a pipeline stage (e.g. pretrain)
    name: str
    weights: str = "random"
    weights_id: str | None = None
    seed: int = 0
    feature_dim: int = Field(gt=0)


class Components(BaseModel):
    model_config = ConfigDict(extra="forbid")
    encoders: dict[str, EncoderComponent]  # tile set name -> encoder
    segmenter: dict[str, Any] | None = None
    stain_fitter: dict[str, Any] | None = None


class CalibrationSpec(BaseModel):
    """Probability calibration fitted on the fold's *validation* predictions (slidemil.evaluation.calibration):
    the temperature applied to the model's probabilities and the operating point on ``1 - p(negative_class)``.
    Bundles written before it load with T = 1 and no operating point."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(1.0, gt=0)
    threshold: float | None = None
    rule: str | None = None
    target_sensitivity: float | None = None
    negative_class: str | None = None
    n_val: int = 0
    val_nll_before: float | None = None
    val_nll_after: float | None = None


class BundleSpec(BaseModel):
    """The validated content of ``bundle.json``."""

    model_config = ConfigDict(extra="forbid")
    format: Literal[2] = BUNDLE_FORMAT
    method: str
    method_config: dict[str, Any]
    class_names: list[str] = Field(min_length=2)
    components: Components
    tile_sets: list[str] = Field(min_length=1)
    tiling: dict[str, Any]
    tissue: dict[str, Any] = Field(default_factory=dict)
    heatmap: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)

    @model_validator(mode="after")
    def _consistent(self) -> BundleSpec:
        from slidemil.methods import get_method

        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be unique, got {self.class_names}")
        neg = self.calibration.negative_class
        if neg is not None and neg not in self.class_names:
            raise ValueError(f"calibration.negative_class {neg!r} is not one of {self.class_names}")
        try:
            method = get_method(self.method)(self.method_config)
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from exc
        if method.n_classes != len(self.class_names):
            raise ValueError(f"the {self.method} model has {method.n_classes} classes but class_names lists "
                             f"{len(self.class_names)}")
        for tile_set, dim in method.input_dims().items():
            enc = self.components.encoders.get(tile_set)
            if enc is None:
                raise ValueError(f"method {self.method} reads {tile_set!r} features but the bundle has no "
                                 f"encoder for that tile set")
            if enc.feature_dim != dim:
                raise ValueError(f"encoder {enc.name} for {tile_set!r} gives {enc.feature_dim}-d features, "
                                 f"the model expects {dim}")
        missing = sorted(set(self.components.encoders) - set(self.tile_sets))
        if missing:
            raise ValueError(f"encoders for tile sets {missing} that are not in tile_sets {self.tile_sets}")
        if "parents" in self.tile_sets and not self.tiling.get("multiscale_factor"):
            raise ValueError("tile set 'parents' needs tiling.multiscale_factor > 0")
        return self


@dataclass
class ModelBundle:
    spec: BundleSpec
    state_dict: dict = field(default_factory=dict, repr=False)

    # ---- convenience views ----------------------------------------------------------------------
    @property
    def method_name(self) -> str:
        return self.spec.method

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    @property
    def encoder(self) -> EncoderComponent:
        """The encoder of the ``tiles`` set (every method reads it)."""
        return self.spec.components.encoders["tiles"]

    @property
    def metadata(self) -> dict[str, Any]:
        return self.spec.metadata

    @classmethod
    def create(cls, method: str, method_config: dict[str, Any], class_names: list[str], encoder: dict[str, Any],
               tiling: dict[str, Any], *, state_dict: dict | None = None, tile_sets: Sequence[str] = ("tiles",),
               **spec_fields: Any) -> ModelBundle:
        """A bundle from its parts, ``encoder`` encoding every tile set in ``tile_sets`` (multi-scale methods:
        ``("tiles", "parents")``); without ``state_dict`` the method's freshly initialised model (seed torch
        first) - for tests, demos and serving benchmarks."""
        encoders = {name: EncoderComponent(**encoder) for name in tile_sets}
        spec = BundleSpec(method=method, method_config=method_config, class_names=class_names,
                          components=Components(encoders=encoders), tile_sets=list(tile_sets), tiling=tiling,
                          **spec_fields)
        if state_dict is None:
            from slidemil.methods import get_method

            state_dict = get_method(method)(method_config).build_model().state_dict()
        return cls(spec, state_dict)

    # ---- persistence ----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Validate, then write atomically: a temporary sibling folder renamed into place."""
        spec = BundleSpec.model_validate(self.spec.model_dump())
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            meta = spec.model_dump()
            _ship_checkpoints(meta, tmp)
            text = json.dumps(to_jsonable(meta), indent=2, sort_keys=True) + "\n"
            (tmp / "bundle.json").write_text(text)
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
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise BundleError(f"{meta_path}: not valid JSON ({exc})") from exc
        fmt = meta.get("format")
        if fmt == 1:
            raise BundleError(
                f"{folder} is a format-1 bundle (slidemil 0.1, before the method contract). This slidemil reads "
                f"format {BUNDLE_FORMAT}: convert it with `slidemil bundle-upgrade {folder}` or retrain "
                "(`dvc repro train`)")
        if fmt != BUNDLE_FORMAT:
            raise BundleError(f"{folder}: unsupported bundle format {fmt!r} (this slidemil reads {BUNDLE_FORMAT})")
        for enc in meta.get("components", {}).get("encoders", {}).values():
            shipped = folder / str(enc.get("weights", ""))
            if str(enc.get("weights", "")).startswith(f"{SHIPPED_DIR}/") and shipped.is_file():
                enc["weights"] = str(shipped.resolve())  # a checkpoint that travels with the bundle
        try:
            spec = BundleSpec.model_validate(meta)
        except ValidationError as exc:
            raise BundleError(f"{folder}: invalid bundle.json: {_readable(exc)}") from exc
        state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
        return cls(spec, state)

    # ---- the method -----------------------------------------------------------------------------
    def build(self):
        """``(method, model)`` with the bundle's weights, in eval mode."""
        from slidemil.methods import get_method

        method = get_method(self.spec.method)(self.spec.method_config)
        model = method.build_model()
        model.load_state_dict(self.state_dict)
        return method, model.eval()


#: bundle sub-folder holding the encoder checkpoints a bundle needs (a pipeline-trained encoder must reach serving)
SHIPPED_DIR = "encoders"


def _ship_checkpoints(meta: dict[str, Any], folder: Path) -> None:
    """Copy each checkpoint encoder's file into ``folder/encoders/`` and point ``weights`` at it (relative), so a
    bundle logged to MLflow and served elsewhere carries the encoder its features came from."""
    for enc in meta["components"]["encoders"].values():
        weights = str(enc.get("weights", ""))
        if weights.split(":")[0] in ("random", "imagenet") or not Path(weights).is_file():
            continue
        ident = str(enc.get("weights_id") or "").removeprefix("checkpoint:") or Path(weights).stem
        rel = f"{SHIPPED_DIR}/{ident}{Path(weights).suffix or '.pt'}"
        (folder / SHIPPED_DIR).mkdir(exist_ok=True)
        if not (folder / rel).exists():
            shutil.copyfile(weights, folder / rel)
        enc["weights"] = rel


def upgrade_format1(folder: str | Path, out: str | Path | None = None) -> Path:
    """Rewrite a format-1 bundle as format 2 (in place, or into ``out``): the model name becomes the method,
    config keys the method does not know (CLAM's in ABMIL / pooling bundles) are dropped."""
    from slidemil.methods import get_method

    folder = Path(folder)
    meta = json.loads((folder / "bundle.json").read_text())
    if meta.get("format") != 1:
        raise BundleError(f"{folder} is not a format-1 bundle (format {meta.get('format')!r})")
    method_cls = get_method(meta["model_name"])
    known = {f.name for f in fields(method_cls.config_cls)}
    enc = dict(meta["encoder"])
    spec = BundleSpec(
        method=meta["model_name"],
        method_config={k: v for k, v in meta["model_config"].items() if k in known},
        class_names=meta["class_names"],
        components=Components(encoders={"tiles": EncoderComponent(
            name=enc["name"], weights=str(enc.get("weights", "random")), weights_id=enc.get("weights_id"),
            seed=int(enc.get("seed", 0)), feature_dim=int(enc["feature_dim"]))}),
        tile_sets=["tiles"],
        tiling=meta["tiling"], tissue=meta.get("tissue", {}), heatmap=meta.get("heatmap", {}),
        metadata={**meta.get("metadata", {}), "upgraded_from_format": 1},
    )
    state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
    return ModelBundle(spec, state).save(out or folder)


def _readable(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'bundle'}: {e['msg']}" for e in exc.errors())
