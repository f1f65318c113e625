"""Intensity normalisation, its inverse, and the background vote (numpy, float32, vectorised)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from infer.tasks import ZScoreNorm


def foreground(volume: np.ndarray) -> np.ndarray:
    """Boolean mask of voxels that carry signal (> 0 once negatives are treated as 0)."""
    return volume > 0


def normalize(volume: np.ndarray, norm: ZScoreNorm) -> np.ndarray:
    """Negatives -> 0, clip at `norm.clip_max`, z-score, background (voxels that were <= 0) -> `norm.background`."""
    v = np.asarray(volume, dtype=np.float32)
    out = np.clip(v, 0.0, norm.clip_max)
    out -= np.float32(norm.mean)
    out /= np.float32(norm.std)
    out[~foreground(v)] = norm.background
    return out


def denormalize(x: np.ndarray, norm: ZScoreNorm) -> np.ndarray:
    """Inverse of `normalize` on the signal range: x * std + mean, negatives -> 0 (float32)."""
    out = np.asarray(x, dtype=np.float32) * np.float32(norm.std)
    out += np.float32(norm.mean)
    np.maximum(out, 0.0, out=out)
    return out


def background_vote(foregrounds: Sequence[np.ndarray]) -> np.ndarray:
    """Background where a strict majority of the inputs is background (two of three for BraSyn)."""
    if not foregrounds:
        raise ValueError("background_vote needs at least one input")
    background_count = np.zeros(foregrounds[0].shape, dtype=np.uint8)
    for fg in foregrounds:
        background_count += ~fg
    return background_count.astype(np.int32) * 2 > len(foregrounds)
