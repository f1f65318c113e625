"""Trivial synthesis baselines a model has to beat, built only from the three available modalities.

- ``mean``: each available modality is normalised with its own BraSyn statistics (`infer.engine.intensity.normalize`),
  the three are averaged voxel-wise, and the mean is denormalised with the *target* modality's statistics.
- ``copy``: the "closest" available modality is normalised with its own statistics and denormalised with the
  target's. "Closest" is a fixed preference table (`COPY_SOURCE`), never chosen by looking at the target:
  t1c <-> t1n (the two T1 contrasts) and t2f <-> t2w (the two T2 contrasts); when the preferred source is not
  available the next one in the table's order is used.

In both, the background of the output follows the BraSyn rule (`infer.engine.intensity.background_vote`): a voxel is
background (0) where a majority of the inputs is background. Outputs are float32 on the target's raw scale.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from infer.engine.intensity import background_vote, denormalize, foreground, normalize
from conventions.normalization import ZScoreNorm
from conventions.tasks import BRASYN_NORMALIZATION

COPY_SOURCE: dict[str, tuple[str, ...]] = {
    "t1c": ("t1n", "t2w", "t2f"),
    "t1n": ("t1c", "t2w", "t2f"),
    "t2f": ("t2w", "t1n", "t1c"),
    "t2w": ("t2f", "t1n", "t1c"),
}
"""Target modality -> available modalities to copy from, most preferred first."""


def _available(inputs: Mapping[str, np.ndarray], target: str) -> dict[str, np.ndarray]:
    avail = {m: v for m, v in inputs.items() if m != target}
    if not avail:
        raise ValueError(f"no input modality available to synthesise {target!r}")
    shapes = {np.shape(v) for v in avail.values()}
    if len(shapes) != 1:
        raise ValueError(f"input modalities have different shapes: {sorted(shapes)}")
    return avail


def _finish(normalised: np.ndarray, avail: Mapping[str, np.ndarray], target_norm: ZScoreNorm) -> np.ndarray:
    out = denormalize(normalised, target_norm)
    out[background_vote([foreground(np.asarray(v)) for v in avail.values()])] = 0.0
    return out


def mean_baseline(
    inputs: Mapping[str, np.ndarray],
    target: str,
    norms: Mapping[str, ZScoreNorm] = BRASYN_NORMALIZATION,
) -> np.ndarray:
    """Voxel-wise mean of the available modalities in normalised space, denormalised as `target`.

    `inputs` maps modality -> raw volume; the target itself, if present, is ignored.
    """
    avail = _available(inputs, target)
    acc = np.zeros(next(iter(avail.values())).shape, dtype=np.float32)
    for m, v in avail.items():
        acc += normalize(v, norms[m])
    acc /= np.float32(len(avail))
    return _finish(acc, avail, norms[target])


def copy_source(available: set[str] | frozenset[str], target: str) -> str:
    """The modality `copy_baseline` copies for `target`, given the available ones (fixed table, `COPY_SOURCE`)."""
    for m in COPY_SOURCE.get(target, ()):
        if m in available and m != target:
            return m
    others = sorted(available - {target})
    if not others:
        raise ValueError(f"no input modality available to synthesise {target!r}")
    return others[0]


def copy_baseline(
    inputs: Mapping[str, np.ndarray],
    target: str,
    norms: Mapping[str, ZScoreNorm] = BRASYN_NORMALIZATION,
) -> np.ndarray:
    """The preferred available modality (`copy_source`), normalised, then denormalised as `target`."""
    avail = _available(inputs, target)
    src = copy_source(set(avail), target)
    return _finish(normalize(avail[src], norms[src]), avail, norms[target])


BASELINES: dict[str, Callable[..., np.ndarray]] = {"mean": mean_baseline, "copy": copy_baseline}
"""Baseline name -> function(inputs, target) returning the synthesised raw volume."""
