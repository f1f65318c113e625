"""Statistics of a benchmark: bootstrap confidence intervals, paired Wilcoxon tests with their power limit,
the downstream utility ratio and correlations across runs."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 2000
UTILITY_FLOOR = 0.1
"""The real-image score a case needs for its utility ratio to count (document 000, section 2.7)."""


def finite(values: Sequence[float | None]) -> np.ndarray:
    """The finite values (None and NaN left out) as float64."""
    return np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)


def bootstrap_ci(values: Sequence[float | None], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the finite values and the percentile bootstrap interval of the mean
    (NaNs without values; a single value is its own interval)."""
    x = finite(values)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    means = np.random.default_rng(seed).choice(x, size=(resamples, x.size), replace=True).mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(x.mean()), float(low), float(high)


def smallest_wilcoxon_p(n: int) -> float:
    """The least two-sided p-value an exact Wilcoxon signed-rank test can give on `n` pairs (all differences of
    one sign): 2 / 2^n. With n <= 5 it is at least 0.0625, so no difference can reach p < 0.05."""
    return min(1.0, 2.0 / 2 ** n) if n > 0 else 1.0


def paired_wilcoxon(a: Sequence[float | None], b: Sequence[float | None]) -> tuple[float, int]:
    """(two-sided p-value, pairs used) of the Wilcoxon signed-rank test on the pairs where both are finite
    (NaN when fewer than two pairs or all differences are 0)."""
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    diff = np.array([x - y for x, y in pairs], dtype=np.float64)
    if diff.size < 2 or not np.any(diff):
        return math.nan, diff.size
    return float(stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue), diff.size


def utility_ratio(synthetic: Mapping[str, float], real: Mapping[str, float], floor: float = UTILITY_FLOOR
                  ) -> float:
    """Mean over the keys (regions) whose real-image score exceeds `floor` of synthetic / real (NaN when none
    does)."""
    ratios = [synthetic[k] / real[k] for k in real
              if math.isfinite(real[k]) and real[k] > floor and math.isfinite(synthetic.get(k, math.nan))]
    return float(np.mean(ratios)) if ratios else math.nan


def correlations(x: Sequence[float | None], y: Sequence[float | None]) -> dict[str, float | int]:
    """Pearson r and Spearman rho (with p-values) over the pairs where both are finite; NaN with fewer than 3."""
    pairs = np.array([(a, b) for a, b in zip(x, y)
                      if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)], dtype=np.float64)
    out: dict[str, float | int] = {"n": len(pairs), "pearson_r": math.nan, "pearson_p": math.nan,
                                   "spearman_rho": math.nan, "spearman_p": math.nan}
    if len(pairs) >= 3 and np.ptp(pairs[:, 0]) > 0 and np.ptp(pairs[:, 1]) > 0:
        pearson, spearman = stats.pearsonr(pairs[:, 0], pairs[:, 1]), stats.spearmanr(pairs[:, 0], pairs[:, 1])
        out.update(pearson_r=float(pearson.statistic), pearson_p=float(pearson.pvalue),
                   spearman_rho=float(spearman.statistic), spearman_p=float(spearman.pvalue))
    return out
