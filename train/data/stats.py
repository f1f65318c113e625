"""Dataset intensity statistics with bounded memory: per modality, the percentile of non-zero voxels (negatives
count as 0) and the mean/std of those voxels after clipping at it, as `conventions.normalization.ZScoreNorm` fields.

Each modality streams its voxels into a histogram of `BINS` bins uniform in log(1 + v) up to `MAX_VALUE`
(relative bin width about 7e-5: 0.6 at an intensity of 8000), keeping per bin the count, the sum and the sum of
squares, so the clipped moments are exact except within the one bin that holds the percentile.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from infer.engine.cases import load_volume
from conventions.normalization import ZScoreNorm
from train.data.cases import TrainCase

BINS = 2 ** 18
MAX_VALUE = 1e8
"""Voxels above this land in the last bin (the percentile is still exact while it lies below)."""


class StreamingHistogram:
    """Log-spaced histogram of positive values with per-bin count, sum and sum of squares."""

    def __init__(self, bins: int = BINS, max_value: float = MAX_VALUE) -> None:
        self.scale = bins / math.log1p(max_value)
        self.edges = np.expm1(np.arange(bins + 1) / self.scale)
        self.count = np.zeros(bins, dtype=np.int64)
        self.sum = np.zeros(bins)
        self.sum_sq = np.zeros(bins)
        self.max = 0.0

    def add(self, values: np.ndarray) -> None:
        """Add positive values (any shape)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        index = np.minimum((np.log1p(v) * self.scale).astype(np.int64), len(self.count) - 1)
        n = len(self.count)
        self.count += np.bincount(index, minlength=n)
        self.sum += np.bincount(index, weights=v, minlength=n)
        self.sum_sq += np.bincount(index, weights=v * v, minlength=n)
        self.max = max(self.max, float(v.max()))

    @property
    def total(self) -> int:
        return int(self.count.sum())

    def percentile(self, q: float) -> float:
        """numpy's default ('linear') percentile, interpolated uniformly within the bin that holds it."""
        if self.total == 0:
            raise ValueError("no values")
        rank = q / 100.0 * (self.total - 1)  # 0-based position in the sorted values
        cum = np.cumsum(self.count)
        b = int(np.searchsorted(cum, rank, side="right"))
        before = cum[b] - self.count[b]
        lo, hi = self.edges[b], min(self.edges[b + 1], self.max)
        return float(lo + (hi - lo) * (rank - before + 0.5) / self.count[b])

    def clipped_mean_std(self, clip: float) -> tuple[float, float]:
        """Mean and (population) std of min(v, clip); the bin holding `clip` counts its values as min(mean, clip)."""
        b = min(int(np.log1p(clip) * self.scale), len(self.count) - 1)
        n = self.total
        s1 = self.sum[:b].sum() + clip * self.count[b + 1:].sum()
        s2 = self.sum_sq[:b].sum() + clip * clip * self.count[b + 1:].sum()
        if self.count[b]:
            inside = min(self.sum[b] / self.count[b], clip)
            s1 += inside * self.count[b]
            s2 += inside * inside * self.count[b]
        mean = s1 / n
        return float(mean), float(math.sqrt(max(s2 / n - mean * mean, 0.0)))


def dataset_statistics(cases: Sequence[TrainCase], modalities: Sequence[str], percentile: float = 99.5,
                       progress: bool = True) -> dict[str, ZScoreNorm]:
    """Per modality: clip = `percentile` of the non-zero voxels of every case, then mean/std after clipping."""
    hists = {m: StreamingHistogram() for m in modalities}
    with tqdm(total=len(cases) * len(modalities), desc="intensity statistics", unit="volume",
              disable=not progress) as bar:
        for case in cases:
            for m in modalities:
                volume = load_volume(case.name, case.files[m])[1]
                hists[m].add(volume[volume > 0])
                bar.update()
    out = {}
    for m, hist in hists.items():
        clip = hist.percentile(percentile)
        mean, std = hist.clipped_mean_std(clip)
        out[m] = ZScoreNorm(clip_max=clip, mean=mean, std=std)
    return out


def save_stats(path: str | Path, norms: Mapping[str, ZScoreNorm], provenance: Mapping[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"normalization": {m: asdict(n) for m, n in norms.items()},
                                "provenance": dict(provenance)}, indent=1))
    return path


def load_stats(path: str | Path, modalities: Sequence[str]) -> dict[str, ZScoreNorm]:
    """The statistics of `python -m train stats`; every one of `modalities` must be there."""
    try:
        data = json.loads(Path(path).read_text())["normalization"]
        norms = {m: ZScoreNorm(**data[m]) for m in data}
    except FileNotFoundError:
        raise ValueError(f"statistics file not found: {path}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a statistics file ({type(err).__name__}: {err})") from None
    lacking = [m for m in modalities if m not in norms]
    if lacking:
        raise ValueError(f"{path}: no statistics for {', '.join(lacking)}")
    return {m: norms[m] for m in modalities}
