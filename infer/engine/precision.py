"""Which floating-point precision the slice generator runs in (`--precision {auto,fp32,bf16}`).

auto = bf16 autocast on a CUDA GPU and on a CPU with native bf16 arithmetic (AVX-512 BF16 or AMX tiles), float32
elsewhere. `torch.ops.mkldnn._is_mkldnn_bf16_supported()` is not asked: it answers yes on any AVX-512 CPU, where
bf16 is emulated and slower than float32. Only the generator's forward pass runs under autocast; normalisation,
view averaging and denormalisation stay float32 (PyTorch's GroupNorm computes its statistics in float32 on bf16
input, so it needs no exception).
"""
from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16")
"""Choices of `--precision`; a run resolves "auto" to one of the others."""

CPU_BF16_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
"""`torch.cpu` capability checks, any of which means native bf16 (a torch without one counts it as no)."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX)."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in CPU_BF16_CHECKS)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"fp32" or "bf16": `precision` itself, or for "auto" bf16 on CUDA and on native-bf16 CPUs, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    return "bf16" if native else "fp32"
