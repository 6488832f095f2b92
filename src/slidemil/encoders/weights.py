"""Where an encoder's weights come from: seeded random init, cached pretrained files, or a local checkpoint.

Three rules drive this module:

- *Offline must fail fast and clearly.* Pretrained files are looked up in the local caches first; a download
  is tried only when allowed and only after a short reachability probe, so a machine without network gets an
  :class:`EncoderWeightsError` in seconds (not after minutes of retries) naming the file it needed and the
  offline alternatives.
- *Random is a real, reproducible choice.* Random init runs under a fixed seed in a forked RNG, so a serving
  process rebuilds bit-identical weights and the caller's global RNG is untouched.
- *Weights have an identity.* ``weights_id`` ("random:seed=0", "imagenet:IMAGENET1K_V1",
  "checkpoint:<sha256[:12]>") is stored with every feature file so stale features are never reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

#: default seconds for the network probe and for each socket operation of a download
DEFAULT_DOWNLOAD_TIMEOUT = 10.0

_RANDOM_RE = re.compile(r"^random(?::seed=(-?\d+))?$")
_PREFIXES_TO_STRIP = ("module.", "backbone.", "model.")


class EncoderWeightsError(RuntimeError):
    """Weights cannot be obtained or do not fit the encoder; the message says what to do instead."""


@dataclass(frozen=True)
class WeightsSpec:
    """A parsed ``weights`` argument.

    ``kind`` is ``random``, ``imagenet`` or ``checkpoint``; ``tag`` optionally names a pretrained variant
    (e.g. ``imagenet:IMAGENET1K_V2``); ``path`` is set for checkpoints.
    """

    kind: str
    seed: int = 0
    tag: str | None = None
    path: Path | None = None
    download: bool = True
    timeout: float = DEFAULT_DOWNLOAD_TIMEOUT

    @classmethod
    def parse(
        cls,
        weights: str | os.PathLike,
        *,
        seed: int = 0,
        download: bool = True,
        timeout: float = DEFAULT_DOWNLOAD_TIMEOUT,
    ) -> WeightsSpec:
        """Accept "random", "random:seed=N", "imagenet", "imagenet:<tag>" or a checkpoint path.

        Every ``weights_id`` except ``checkpoint:...`` parses back to the same weights, so a stored id is
        enough to rebuild the encoder.
        """
        common = {"download": download, "timeout": timeout}
        if isinstance(weights, str):
            m = _RANDOM_RE.match(weights)
            if m:
                return cls("random", seed=int(m.group(1)) if m.group(1) is not None else int(seed), **common)
            if weights == "imagenet" or weights.startswith("imagenet:"):
                tag = weights.partition(":")[2] or None
                return cls("imagenet", seed=int(seed), tag=tag, **common)
            if weights.startswith("checkpoint:") and not Path(weights).exists():
                raise EncoderWeightsError(
                    f"weights {weights!r} identifies a checkpoint by its hash but not where it is; "
                    "pass the checkpoint's path instead (weights: /path/to/checkpoint.pt)"
                )
        path = Path(weights).expanduser()
        if not path.is_file():
            raise EncoderWeightsError(
                f"checkpoint file {str(weights)!r} not found; weights must be 'random', 'random:seed=N', "
                "'imagenet' or the path of a local checkpoint (.pt/.pth/.safetensors)"
            )
        return cls("checkpoint", seed=int(seed), path=path, **common)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with ``torch.manual_seed(seed)`` without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def checkpoint_weights_id(path: str | os.PathLike) -> str:
    return f"checkpoint:{sha256_file(path)[:12]}"


def load_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint: a plain state_dict, a dict holding one under 'state_dict', or safetensors."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickled code objects, ...
        raise EncoderWeightsError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EncoderWeightsError(
            f"checkpoint {path} is not a state_dict (a mapping of parameter names to tensors, "
            "optionally under the key 'state_dict')"
        )
    return dict(obj)


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    ignore_prefixes: Iterable[str] = (),
) -> None:
    """Strictly load ``state_dict`` into ``module``.

    Keys of the parts the encoder discards (e.g. a classifier head, ``ignore_prefixes``) may be present;
    a ``module.``/``backbone.``/``model.`` prefix shared by all keys is removed. Anything else that does not
    match exactly -- missing keys, unexpected keys, wrong shapes -- is an error listing the first offenders.
    """
    expected = module.state_dict()
    sd = _strip_common_prefix(dict(state_dict), expected)
    ignore = tuple(ignore_prefixes)
    sd = {k: v for k, v in sd.items() if k in expected or not k.startswith(ignore)}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(sd[k].shape)} vs encoder {tuple(expected[k].shape)}"
        for k in set(sd) & set(expected)
        if sd[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", shapes),
        ):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:8])}{more}")
        raise EncoderWeightsError(
            f"{source} does not match the encoder architecture: "
            + "; ".join(parts)
            + ". Was it saved from a different encoder?"
        )
    module.load_state_dict(sd, strict=True)


def _strip_common_prefix(
    sd: dict[str, torch.Tensor], expected: Mapping[str, object]
) -> dict[str, torch.Tensor]:
    for _ in range(3):  # e.g. "module.backbone." from a DDP-wrapped Encoder
        if not sd or any(k in expected for k in sd):
            break
        prefix = next((p for p in _PREFIXES_TO_STRIP if all(k.startswith(p) for k in sd)), None)
        if prefix is None:
            break
        sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


# ---- pretrained files: cache first, then a guarded download ------------------------------------------------
def torch_hub_checkpoint_path(url: str) -> Path:
    """Where ``torch.hub`` caches the file of ``url`` ($TORCH_HOME/hub/checkpoints/<basename>)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(url).path)


def network_unavailable_reason(url: str, timeout: float) -> str | None:
    """None when ``url``'s host accepts a TCP connection within ``timeout`` s, else why not."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        if "huggingface.co" in url:
            return "HF_HUB_OFFLINE is set"
    parsed = urllib.parse.urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    if not host:
        return f"not a URL: {url}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"cannot reach {host}:{port} ({exc or type(exc).__name__})"


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Bound every blocking socket call of a download (urllib has no overall timeout of its own)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def offline_error(
    encoder: str, needed: str, cache_path: Path | str, reason: str, place_hint: str | None = None
) -> EncoderWeightsError:
    place = (
        place_hint
        or f"copy the file to {cache_path} (or set TORCH_HOME to a folder whose hub/checkpoints holds it)"
    )
    return EncoderWeightsError(
        f"{encoder}: pretrained weights need the file {needed}, which is not in the local cache "
        f"({cache_path}) and cannot be downloaded: no network is available ({reason}). Offline options: "
        f"{place}; give a local checkpoint with `weights: /path/to/checkpoint.pt`; or use `weights: random`."
    )


def fetch_torch_hub_file(url: str, *, encoder: str, spec: WeightsSpec) -> Path:
    """Path of the cached file for ``url``, downloading it first if allowed and reachable."""
    cached = torch_hub_checkpoint_path(url)
    if cached.is_file():
        return cached
    if not spec.download:
        raise offline_error(encoder, cached.name, cached, "downloads disabled (download=False)")
    reason = network_unavailable_reason(url, spec.timeout)
    if reason is not None:
        raise offline_error(encoder, f"{cached.name} ({url})", cached, reason)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        with socket_timeout(spec.timeout):
            torch.hub.download_url_to_file(url, str(cached), progress=False)
    except Exception as exc:
        raise offline_error(encoder, f"{cached.name} ({url})", cached, f"download failed: {exc}") from exc
    return cached
