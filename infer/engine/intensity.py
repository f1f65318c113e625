"""Intensity normalisation, its inverse, foreground masks and the background vote (numpy, float32, vectorised).

The normalisations themselves are data (`conventions.normalization.ZScoreNorm`, `PercentileNorm`, `WindowNorm`); this module
says what each one does.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import binary_fill_holes

from conventions.normalization import Normalization, PercentileNorm, ScaleNorm, WindowNorm, ZScoreNorm


def foreground(volume: np.ndarray, norm: Normalization | None = None) -> np.ndarray:
    """Boolean mask of the voxels that carry signal under `norm` (default: > 0, negatives counting as 0)."""
    if isinstance(norm, WindowNorm):
        return volume > norm.low
    mask = volume > 0
    if isinstance(norm, PercentileNorm):
        if norm.foreground_fraction > 0:
            mask = volume > norm.foreground_fraction * volume.max()
        if norm.fill_holes:
            mask = binary_fill_holes(mask)
    return mask


def normalize(volume: np.ndarray, norm: Normalization, mask: np.ndarray | None = None) -> np.ndarray:
    """Raw volume -> normalised float32 with background (outside `foreground`, or `mask` when the caller has
    computed it already) set to `norm.background`.

    z-score: negatives -> 0, clip at `clip_max`, (x - mean) / std. Percentile: the case's `low`/`high`
    percentiles of the foreground -> -1/1, clipped. Window: [low, high] -> [-1, 1], clipped. Scale: [0, the
    case's `percentile` of the foreground] -> [-1, 1], clipped.
    """
    v = np.asarray(volume, dtype=np.float32)
    fg = foreground(v, norm) if mask is None else mask
    if isinstance(norm, ScaleNorm):
        high = float(np.percentile(v[fg], norm.percentile)) if fg.any() else 1.0
        out = np.clip(v, 0.0, high)
        out *= np.float32(2.0 / max(high, 1e-6))
        out -= np.float32(1.0)
    elif isinstance(norm, ZScoreNorm):
        out = np.clip(v, 0.0, norm.clip_max)
        out -= np.float32(norm.mean)
        out /= np.float32(norm.std)
    else:
        if isinstance(norm, PercentileNorm):
            low, high = (np.percentile(v[fg], [norm.low, norm.high]) if fg.any() else (0.0, 1.0))
        else:
            low, high = norm.low, norm.high
        out = np.clip(v, low, high)
        out -= np.float32(low)
        out *= np.float32(2.0 / max(float(high - low), 1e-6))
        out -= np.float32(1.0)
    out[~fg] = norm.background
    return out


def denormalize(x: np.ndarray, norm: Normalization) -> np.ndarray:
    """Inverse of `normalize` on the signal range (float32): z-score x * std + mean with negatives -> 0; window
    back to [low, high]; scale [-1, 1] -> [0, output_high] (clipped). ValueError for a per-case percentile
    normalisation, which has no inverse."""
    out = np.asarray(x, dtype=np.float32)
    if isinstance(norm, ScaleNorm):
        out = np.clip(out, -1.0, 1.0) + np.float32(1.0)
        out *= np.float32(norm.output_high / 2.0)
        return out
    if isinstance(norm, ZScoreNorm):
        out = out * np.float32(norm.std)
        out += np.float32(norm.mean)
        np.maximum(out, 0.0, out=out)
        return out
    if isinstance(norm, WindowNorm):
        out = np.clip(out, -1.0, 1.0) + np.float32(1.0)
        out *= np.float32((norm.high - norm.low) / 2.0)
        out += np.float32(norm.low)
        return out
    raise ValueError(f"{type(norm).__name__} is per case and cannot be inverted; an output modality needs a "
                     "z-score or window normalisation")


def background_vote(foregrounds: Sequence[np.ndarray]) -> np.ndarray:
    """Background where a strict majority of the inputs is background (two of three for BraSyn)."""
    if not foregrounds:
        raise ValueError("background_vote needs at least one input")
    background_count = np.zeros(foregrounds[0].shape, dtype=np.uint8)
    for fg in foregrounds:
        background_count += ~fg
    return background_count.astype(np.int32) * 2 > len(foregrounds)
