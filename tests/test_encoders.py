"""Encoder registry: declared dimensions, preprocessing, weights sources (random, cache, checkpoint), offline errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from slidemil.encoders import EncoderWeightsError, available_encoders, build_encoder

SRC = Path(__file__).resolve().parents[1] / "src"


def _tiles(n: int = 2, px: int = 224, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, px, px, 3), dtype=torch.uint8, generator=g)


def _small_input(seed: int = 0) -> torch.Tensor:
    """Normalised float NCHW at 64 px: enough to compare weights, 12x cheaper than 224 px on a busy CPU."""
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _features(enc, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return enc(x)


@pytest.fixture
def offline_caches(tmp_path, monkeypatch) -> Path:
    """Empty torch hub and Hugging Face caches, so no file a developer happens to have makes a test pass."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_available_encoders_lists_builtins():
    names = available_encoders()
    assert {"resnet50_trunc", "resnet18", "vgg16", "timm:<model_name>"} <= set(names)


@pytest.mark.parametrize(
    ("name", "dim"), [("resnet50_trunc", 1024), ("resnet18", 512), ("vgg16", 512), ("timm:resnet18", 512)]
)
def test_random_encoder_returns_declared_feature_dim(name, dim):
    enc = build_encoder(name, "random")
    assert enc.name == name
    assert enc.feature_dim == dim
    assert enc.input_px == 224
    assert enc.weights_id == "random:seed=0"
    assert not enc.training
    # a 64 px input keeps this cheap: the pooled dimension does not depend on the spatial size
    y = _features(enc, _small_input())
    assert y.shape == (2, dim) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert not torch.allclose(y[0], y[1])  # different tiles, different features


def test_preprocess_resizes_scales_and_normalises_per_channel():
    enc = build_encoder("resnet18")
    batch = torch.zeros(3, 64, 64, 3, dtype=torch.uint8)
    batch[..., 0] = 255  # pure red, so a channel-order mistake shows
    batch[1] = 128
    x = enc.preprocess(batch)
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    mean, std = np.array(enc.mean), np.array(enc.std)
    np.testing.assert_allclose(x[0, :, 100, 100].numpy(), (np.array([1.0, 0.0, 0.0]) - mean) / std, atol=1e-5)
    np.testing.assert_allclose(x[1, :, 7, 200].numpy(), (128 / 255 - mean) / std, atol=1e-5)
    # a tile already at input_px is not resampled: pixel (i, j) maps to (i, j)
    t = _tiles(1)
    x224 = enc.preprocess(t)
    np.testing.assert_allclose(
        x224[0, 1, 5, 9].item(), (t[0, 5, 9, 1].item() / 255 - mean[1]) / std[1], atol=1e-5
    )


def test_timm_encoder_takes_input_size_and_normalisation_from_timm():
    enc = build_encoder("timm:resnet18")
    assert enc.interpolation == "bicubic"  # timm's data config for resnet18
    x = enc.preprocess(_tiles(px=100))
    assert x.shape == (2, 3, 224, 224)
    lo, hi = (0 - np.array(enc.mean)) / enc.std, (1 - np.array(enc.mean)) / enc.std
    assert (
        x.amin().item() >= lo.min() - 1e-5 and x.amax().item() <= hi.max() + 1e-5
    )  # bicubic overshoot clamped
    assert enc.mean == pytest.approx((0.485, 0.456, 0.406)) and enc.std == pytest.approx(
        (0.229, 0.224, 0.225)
    )


@pytest.mark.parametrize(
    ("name", "needed"), [("resnet18", "resnet18-f37072fd.pth"), ("timm:resnet18", "model.safetensors")]
)
def test_imagenet_offline_fails_fast_with_instructions(offline_caches, name, needed):
    start = time.perf_counter()
    with pytest.raises(EncoderWeightsError) as info:
        build_encoder(name, "imagenet", download_timeout=5)
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"offline failure took {elapsed:.1f} s"
    msg = str(info.value)
    assert needed in msg
    assert "no network" in msg
    assert "weights: /path/to/checkpoint.pt" in msg and "weights: random" in msg
    assert str(offline_caches) in msg  # says which cache was searched


def test_imagenet_with_downloads_disabled_never_touches_the_network(offline_caches):
    start = time.perf_counter()
    with pytest.raises(EncoderWeightsError, match="downloads disabled"):
        build_encoder("resnet50_trunc", "imagenet", download=False)
    assert time.perf_counter() - start < 10


def test_imagenet_loads_offline_from_a_prepopulated_torch_cache(offline_caches):
    import torchvision

    torch.manual_seed(123)
    reference = torchvision.models.resnet18(weights=None).eval()
    cache = offline_caches / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / "resnet18-f37072fd.pth")

    enc = build_encoder("resnet18", "imagenet", download=False)
    assert enc.weights_id == "imagenet:IMAGENET1K_V1"
    reference.fc = torch.nn.Identity()
    x = _small_input()
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), reference(x), rtol=0, atol=1e-6)


def test_checkpoint_round_trip_and_weights_id(tmp_path):
    src = build_encoder("resnet18", seed=7)
    ckpt = tmp_path / "enc.pt"
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, ckpt)  # Encoder keys carry a "backbone." prefix
    loaded = build_encoder("resnet18", ckpt)
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert loaded.weights_id == f"checkpoint:{sha[:12]}"
    assert loaded.weights_source == str(ckpt.resolve())
    x = _small_input()
    assert torch.equal(_features(src, x), _features(loaded, x))
    assert not torch.equal(_features(build_encoder("resnet18", seed=8), x), _features(loaded, x))


def test_full_torchvision_checkpoint_loads_into_truncated_backbone(tmp_path):
    """A plain torchvision state_dict (with fc) is accepted: the parts the encoder cuts away are ignored."""
    import torchvision

    torch.manual_seed(3)
    full = torchvision.models.resnet18(weights=None).eval()
    torch.save(full.state_dict(), tmp_path / "tv.pth")
    enc = build_encoder("resnet18", str(tmp_path / "tv.pth"))
    full.fc = torch.nn.Identity()
    x = _small_input()
    with torch.inference_mode():
        torch.testing.assert_close(enc(x), full(x), rtol=0, atol=1e-6)


def test_timm_checkpoint_round_trip(tmp_path):
    src = build_encoder("timm:resnet18", seed=4)
    torch.save(src.backbone.state_dict(), tmp_path / "t.pt")
    loaded = build_encoder("timm:resnet18", tmp_path / "t.pt")
    assert loaded.weights_id.startswith("checkpoint:")
    x = _small_input()
    assert torch.equal(_features(src, x), _features(loaded, x))


def test_mismatched_checkpoint_names_the_offending_keys(tmp_path):
    sd = build_encoder("resnet18").backbone.state_dict()
    torch.save(sd, tmp_path / "r18.pt")
    with pytest.raises(EncoderWeightsError) as info:
        build_encoder("resnet50_trunc", tmp_path / "r18.pt")
    msg = str(info.value)
    assert "does not match the encoder architecture" in msg
    assert "missing keys" in msg and "layer1.0.conv3.weight" in msg

    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(sd, tmp_path / "bad_shape.pt")
    with pytest.raises(
        EncoderWeightsError, match=r"shape mismatches: conv1\.weight: checkpoint \(64, 3, 3, 3\)"
    ):
        build_encoder("resnet18", tmp_path / "bad_shape.pt")


def test_bad_names_and_weights_are_clear_errors(tmp_path):
    with pytest.raises(KeyError, match="unknown encoder 'resnet51'"):
        build_encoder("resnet51")
    with pytest.raises(KeyError, match="timm has no model"):
        build_encoder("timm:not_a_model_xyz")
    with pytest.raises(EncoderWeightsError, match="'imagnet' not found"):
        build_encoder("resnet18", "imagnet")
    with pytest.raises(EncoderWeightsError, match="pass the checkpoint's path"):
        build_encoder("resnet18", "checkpoint:0123456789ab")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderWeightsError, match="cannot read checkpoint"):
        build_encoder("resnet18", tmp_path / "junk.pt")


def test_random_weights_id_rebuilds_the_same_encoder_without_touching_global_rng():
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    a = build_encoder("resnet18", "random", seed=11)
    assert torch.equal(torch.rand(3), expected_next)  # caller's RNG stream unchanged by the build
    b = build_encoder("resnet18", a.weights_id)
    assert a.weights_id == b.weights_id == "random:seed=11"
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


_SUBPROCESS = textwrap.dedent(
    """
    import hashlib, sys, numpy as np, torch
    from slidemil.encoders import build_encoder
    torch.manual_seed(int(sys.argv[2]))  # a different global state in each process must not matter
    enc = build_encoder("resnet18", "random", seed=0)
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in enc.state_dict().values())).hexdigest()
    x = torch.linspace(-2, 2, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64)
    with torch.inference_mode():
        np.save(sys.argv[1], enc(x).numpy())
    print(digest)
    """
)


def test_random_init_is_identical_across_fresh_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SUBPROCESS, str(tmp_path / f"{i}.npy"), str(i)],
            env={**env, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    here = build_encoder("resnet18", "random", seed=0)
    here_digest = hashlib.sha256(
        b"".join(v.numpy().tobytes() for v in here.state_dict().values())
    ).hexdigest()
    assert outs == [here_digest, here_digest]  # bit-identical weights in every process
    a, b = np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy")
    assert a.shape == (2, 512)
    np.testing.assert_array_equal(a, b)  # and so identical features
