"""Which numeric precision and memory layout an encoder runs in, chosen from what the hardware does natively.

Why a choice at all: channels-last is faster for convolutions everywhere (oneDNN on CPU, cuDNN on GPU), but
bf16 autocast is only faster where the CPU computes bf16 natively (AMX or AVX512-BF16); on a plain AVX2 CPU it
is emulated and about 3x slower than fp32. On CUDA, autocast (bf16 where the GPU supports it, else fp16) is
always the fast path. ``auto`` picks accordingly; ``fp32`` and ``bf16`` force a mode (e.g. bit-comparable
features across machines, or measuring bf16 where it is not native).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

log = logging.getLogger(__name__)

REQUESTS = ("auto", "fp32", "bf16")
#: /proc/cpuinfo flags that mean the CPU computes bf16 natively
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU has AMX-BF16 or AVX512-BF16 (bf16 matmuls/convolutions run in hardware)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in NATIVE_BF16_FLAGS)


@dataclass(frozen=True)
class Precision:
    """How to run an encoder: device type, autocast dtype (None = plain fp32), memory layout, and why."""

    device: str
    autocast_dtype: torch.dtype | None
    channels_last: bool
    reason: str

    @property
    def name(self) -> str:
        """Recorded in feature files and summaries: ``float32``, ``bfloat16-autocast``, ``float16-autocast``."""
        if self.autocast_dtype is None:
            return "float32"
        return f"{str(self.autocast_dtype).removeprefix('torch.')}-autocast"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device, dtype=self.autocast_dtype)

    def describe(self) -> dict[str, object]:
        return {"precision": self.name, "channels_last": self.channels_last, "precision_reason": self.reason}


def choose_precision(device: str | torch.device, request: str = "auto", *,
                     flags: frozenset[str] | None = None) -> Precision:
    """The precision for ``device`` (``cpu`` or ``cuda``) under ``request`` (auto | fp32 | bf16)."""
    if request not in REQUESTS:
        raise ValueError(f"precision must be one of {REQUESTS}, got {request!r}")
    kind = torch.device(device).type
    if kind == "cuda":
        if request == "fp32":
            return Precision("cuda", None, True, "fp32 requested")
        bf16 = torch.cuda.is_bf16_supported()
        if request == "bf16" and not bf16:
            raise ValueError("precision bf16 requested but this GPU does not support bfloat16")
        dtype = torch.bfloat16 if bf16 else torch.float16
        return Precision("cuda", dtype, True, f"CUDA AMP ({'bf16 supported' if bf16 else 'no bf16: fp16'})")
    if kind != "cpu":
        return Precision(kind, None, False, f"{kind}: fp32, default layout")
    native = cpu_native_bf16(flags)
    if request == "fp32":
        return Precision("cpu", None, True, "fp32 requested")
    if request == "bf16":
        why = "bf16 requested" + ("" if native else " (NOT native on this CPU: emulated, slower than fp32)")
        return Precision("cpu", torch.bfloat16, True, why)
    if native:
        found = ", ".join(f for f in NATIVE_BF16_FLAGS if f in (cpu_flags() if flags is None else flags))
        return Precision("cpu", torch.bfloat16, True, f"auto: native bf16 ({found})")
    return Precision("cpu", None, True, "auto: no native bf16 (no amx_bf16/avx512_bf16): fp32")


_logged: set[tuple[str, str]] = set()


def log_choice(precision: Precision, encoder_name: str) -> None:
    """Log the choice once per (encoder, precision) in a process, not once per slide."""
    key = (encoder_name, precision.name + precision.reason)
    if key not in _logged:
        _logged.add(key)
        log.info("%s on %s: %s, channels_last=%s (%s)", encoder_name, precision.device, precision.name,
                 precision.channels_last, precision.reason)
