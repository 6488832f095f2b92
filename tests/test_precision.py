"""Precision choice from CPU flags, and bf16 features close to fp32 where bf16 runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidemil.encoders import build_encoder
from slidemil.encoders.precision import choose_precision, cpu_native_bf16

AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})
AMX = AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}


def test_auto_picks_bf16_only_on_cpus_with_native_bf16():
    plain = choose_precision("cpu", "auto", flags=AVX2_ONLY)
    assert plain.name == "float32" and plain.autocast_dtype is None and plain.channels_last
    native = choose_precision("cpu", "auto", flags=AMX)
    assert native.name == "bfloat16-autocast" and native.channels_last and "amx_bf16" in native.reason
    assert cpu_native_bf16(frozenset({"avx512_bf16"})) and not cpu_native_bf16(AVX2_ONLY)


def test_forced_modes_and_bad_request():
    assert choose_precision("cpu", "fp32", flags=AMX).name == "float32"
    slow = choose_precision("cpu", "bf16", flags=AVX2_ONLY)
    assert slow.autocast_dtype is torch.bfloat16 and "NOT native" in slow.reason
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("cpu", "fp16")
    assert choose_precision("cpu", "auto", flags=AMX).describe() == {
        "precision": "bfloat16-autocast", "channels_last": True,
        "precision_reason": "auto: native bf16 (amx_bf16, avx512_bf16)"}


def test_bf16_channels_last_features_stay_close_to_fp32():
    enc = build_encoder("resnet18", "random", seed=0)
    tiles = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8))
    ref = enc.embed(tiles)
    enc.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        x = enc.preprocess(tiles, memory_format=torch.channels_last)
        assert x.is_contiguous(memory_format=torch.channels_last)
        fp32_cl = enc(x)
        with choose_precision("cpu", "bf16").autocast():
            bf16 = enc(x).float()
    torch.testing.assert_close(fp32_cl, ref, rtol=1e-4, atol=1e-4)
    cos = torch.nn.functional.cosine_similarity(bf16, ref, dim=1)
    assert cos.min() > 0.99, cos
