"""Numeric precision of inference: ``float32`` (exact: the mode the parity tests check) or ``bfloat16`` (fast).

``bfloat16`` runs the network under autocast: matrix products and convolutions in bfloat16, reductions such
as softmax in float32. ``auto`` picks it where the hardware computes bfloat16 natively: CUDA, and CPUs with
AVX-512 BF16 or AMX. Apple MPS stays in float32 under ``auto`` (bfloat16 there is not measured yet); it can
be chosen explicitly.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
from pathlib import Path
from typing import Callable, ContextManager

import torch
from torch import nn

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


def in_autocast_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to the dtype autocast computes matrix products in on its device: once, for a tensor that
    several layers take (each would round it again); ``x`` itself outside autocast (exact mode)."""
    device = x.device.type
    if x.is_floating_point() and torch.is_autocast_enabled(device):
        return x.to(torch.get_autocast_dtype(device))
    return x


def cpu_bfloat16_autocast() -> bool:
    """True inside a CPU bfloat16 autocast region."""
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def float32_under_autocast(forward: Callable) -> Callable:
    """Decorates the ``forward`` of a part of the network that fast mode computes in float32 (the mask decoder,
    :class:`~.mask_decoder.MaskDecoder`): inside autocast it runs with autocast off on float32 copies of its
    floating-point tensor arguments (also inside tuples); outside autocast (exact mode) it changes nothing. The
    part's class sets ``computes_in_float32 = True``, so that :func:`with_bfloat16_weights` leaves its layers in
    float32."""

    def to_float32(value):
        if isinstance(value, tuple):
            return tuple(to_float32(item) for item in value)
        return value.float() if torch.is_tensor(value) and value.is_floating_point() else value

    @functools.wraps(forward)
    def wrapper(module: nn.Module, *args):
        device = next(arg for arg in args if torch.is_tensor(arg)).device.type
        if not torch.is_autocast_enabled(device):
            return forward(module, *args)
        with torch.autocast(device, enabled=False):
            return forward(module, *to_float32(args))

    return wrapper


_ROUNDED_BY_AUTOCAST = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def with_bfloat16_weights(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for bfloat16 autocast whose linear and convolution layers hold their weights and biases
    in bfloat16; every other tensor (norms, embeddings, buffers) is shared with ``model``, which is left as it is.

    Autocast computes these layers in bfloat16 either way, rounding each float32 weight again on every call (about
    300 casts, 39 M values, per tracked t512 slice); the copy rounds them once, so results are bit for bit the
    same. It holds 2 bytes a weight; the float32 weights are freed when nothing else holds ``model``. The layers
    of a part that computes in float32 (:func:`float32_under_autocast`) stay float32, shared with ``model``.
    """
    shared = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
    rounded = copy.deepcopy(model, memo=shared)
    in_float32 = {id(module) for part in rounded.modules() if getattr(part, "computes_in_float32", False)
                  for module in part.modules()}
    for module in rounded.modules():
        if isinstance(module, _ROUNDED_BY_AUTOCAST) and id(module) not in in_float32:
            for name, parameter in list(module.named_parameters(recurse=False)):
                setattr(module, name, nn.Parameter(parameter.detach().to(torch.bfloat16), requires_grad=False))
    return rounded.eval()
