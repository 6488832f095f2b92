"""``timm:<model_name>``: any timm model as a pooled-feature encoder (``num_classes=0``).

Input size, normalisation and resize interpolation come from timm's own data config for the model. Pretrained
weights are located in the Hugging Face or torch hub cache and handed to timm as a local file, because timm's
own hub download retries for about a minute before failing when there is no network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from slidemil.encoders.catalog import register_encoder
from slidemil.encoders.encoder import Encoder
from slidemil.encoders.weights import (
    EncoderWeightsError,
    WeightsSpec,
    checkpoint_weights_id,
    fetch_torch_hub_file,
    load_checkpoint,
    load_into,
    network_unavailable_reason,
    offline_error,
    seeded,
    torch_hub_checkpoint_path,
)

_HF_FILES = ("model.safetensors", "pytorch_model.bin")


@register_encoder("timm:")
def timm_encoder(model_name: str, spec: WeightsSpec, **create_kw: Any) -> Encoder:
    """Build ``timm.create_model(model_name, num_classes=0, **create_kw)`` with the requested weights."""
    import timm

    name = f"timm:{model_name}"
    if spec.kind == "imagenet" and spec.tag:
        model_name = f"{model_name.partition('.')[0]}.{spec.tag}"
    if not timm.is_model(model_name.partition(".")[0]):
        raise KeyError(f"{name}: timm has no model {model_name!r} (see timm.list_models())")
    with seeded(spec.seed):
        model = timm.create_model(model_name, pretrained=False, num_classes=0, **create_kw)
    classifier = model.pretrained_cfg.get("classifier") or "head"
    discarded = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier))

    if spec.kind == "random":
        weights_id, source = f"random:seed={spec.seed}", ""
    elif spec.kind == "imagenet":
        cfg = dict(model.pretrained_cfg)
        path = _cached_pretrained_file(name, cfg, spec)
        with seeded(spec.seed):
            model = timm.create_model(
                model_name,
                pretrained=True,
                num_classes=0,
                pretrained_cfg_overlay={"file": str(path)},
                **create_kw,
            )
        tag = cfg.get("tag") or "default"
        weights_id, source = f"imagenet:{tag}", str(path)
    else:
        assert spec.path is not None
        load_into(
            model, load_checkpoint(spec.path), source=f"checkpoint {spec.path}", ignore_prefixes=discarded
        )
        weights_id, source = checkpoint_weights_id(spec.path), str(spec.path.resolve())

    data_cfg = timm.data.resolve_data_config({}, model=model)
    _, h, w = data_cfg["input_size"]
    if h != w:
        raise ValueError(f"{name}: non-square input {h}x{w} is not supported (tiles are square)")
    model.eval()
    with torch.inference_mode():  # timm models may add a projection after pooling: ask the model itself
        feature_dim = int(model(torch.zeros(1, 3, h, w)).shape[-1])
    interpolation = data_cfg.get("interpolation", "bilinear")
    return Encoder(
        model,
        name=name,
        weights_id=weights_id,
        weights_source=source,
        feature_dim=feature_dim,
        input_px=h,
        mean=data_cfg["mean"],
        std=data_cfg["std"],
        interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
    )


def _cached_pretrained_file(name: str, cfg: dict, spec: WeightsSpec) -> Path:
    """Local file with the model's pretrained weights: from the HF cache, the torch hub cache or a download."""
    hf_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    if cfg.get("file") and Path(cfg["file"]).is_file():
        return Path(cfg["file"])
    if hf_id:
        filenames = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else list(_HF_FILES)
        found = _hf_cached(hf_id, filenames)
        if found is not None:
            return found
    if url and torch_hub_checkpoint_path(url).is_file():
        return torch_hub_checkpoint_path(url)
    if not hf_id and not url:
        raise EncoderWeightsError(
            f"{name}: timm has no pretrained weights for this model (no hf_hub_id or url)"
        )
    if hf_id:
        return _hf_download(name, hf_id, filenames, spec)
    return fetch_torch_hub_file(url, encoder=name, spec=spec)


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else constants.HF_HUB_CACHE
    )


def _hf_cached(repo_id: str, filenames: list[str]) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for fn in filenames:
        hit = try_to_load_from_cache(repo_id, fn, cache_dir=_hf_cache_dir())
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def _hf_download(name: str, repo_id: str, filenames: list[str], spec: WeightsSpec) -> Path:
    from huggingface_hub import hf_hub_download

    needed = f"{filenames[0]} from the Hugging Face repo {repo_id}"
    cache = Path(_hf_cache_dir())
    hint = (
        f"fetch it where there is network (`hf download {repo_id}`) and copy that Hugging Face cache to {cache} "
        "(or set HF_HOME / HF_HUB_CACHE to it); the downloaded model.safetensors also works as a checkpoint"
    )
    if not spec.download:
        raise offline_error(name, needed, cache, "downloads disabled (download=False)", hint)
    reason = network_unavailable_reason(f"https://huggingface.co/{repo_id}", spec.timeout)
    if reason is not None:
        raise offline_error(name, needed, cache, reason, hint)
    errors = []
    for fn in filenames:
        try:
            return Path(hf_hub_download(repo_id, fn, cache_dir=str(cache), etag_timeout=spec.timeout))
        except Exception as exc:  # missing file variant or network failure: try the next, then report all
            errors.append(f"{fn}: {exc}")
    raise offline_error(name, needed, cache, "download failed: " + " | ".join(errors), hint)
