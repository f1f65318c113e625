"""Learning rate: linear scaling with the global batch, linear warm-up, then one cosine cycle.

The rate is a pure function of the optimizer step, so resuming needs only the step count.
"""
from __future__ import annotations

import math

import torch


def scaled_lr(lr: float, global_batch: int, reference_batch: int) -> float:
    """`lr` given for `reference_batch`, scaled linearly to `global_batch`."""
    return lr * global_batch / reference_batch


def warmup_cosine(step: int, total: int, peak: float, warmup: int, min_fraction: float = 0.0) -> float:
    """Rate at optimizer step `step` (0-based) of `total`: linear from peak/warmup up to `peak` over `warmup`
    steps, then a half cosine from `peak` down to `min_fraction * peak` at step `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    floor = peak * min_fraction
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
