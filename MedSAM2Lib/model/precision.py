"""Numeric precision of inference: ``float32`` (exact: the mode the parity tests check) or ``bfloat16`` (fast).

``bfloat16`` runs the network under autocast: matrix products and convolutions in bfloat16, reductions such
as softmax in float32. ``auto`` picks it where the hardware computes bfloat16 natively: CUDA, and CPUs with
AVX-512 BF16 or AMX. Apple MPS stays in float32 under ``auto`` (bfloat16 there is not measured yet); it can
be chosen explicitly.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ContextManager

import torch

PRECISIONS = ("auto", "float32", "bfloat16")
_CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_fast_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU has AVX-512 BF16 or AMX instructions (PyTorch's own check, else /proc/cpuinfo)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if all(callable(check) for check in checks):
        return any(check() for check in checks)
    try:
        flags = cpuinfo.read_text(errors="replace").split()
    except OSError:
        return False
    return any(flag in flags for flag in _CPU_BFLOAT16_FLAGS)


def resolve_precision(name: str, device: torch.device, cpu_fast_bfloat16=cpu_has_fast_bfloat16) -> torch.dtype:
    """``auto``, ``float32`` or ``bfloat16`` -> the dtype inference computes in on ``device``."""
    if name not in PRECISIONS:
        raise ValueError(f"Unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}.")
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" or (device.type == "cpu" and cpu_fast_bfloat16()):
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """Autocast to ``dtype`` on ``device``; nothing at all in float32, so exact mode runs unchanged."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def cpu_bfloat16_autocast() -> bool:
    """True inside a CPU bfloat16 autocast region."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
