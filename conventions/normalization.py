"""Intensity normalisations, as data: how a modality's raw intensities map to a network's [-1, 1] units and back.

What each does to an array is in `infer.engine.intensity`; checkpoints store them as JSON (`norm_to_json`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ZScoreNorm:
    """Dataset-level intensity normalisation of one modality.

    Forward: negatives -> 0, clip at `clip_max`, z-score with `mean`/`std`, voxels that were 0 -> `background`.
    Inverse: x * std + mean, negatives -> 0.
    """

    clip_max: float
    mean: float
    std: float
    background: float = -1.0


@dataclass(frozen=True)
class PercentileNorm:
    """Per-case scaling of one modality: the `low`/`high` percentiles of its foreground map to -1/1 (clipped).

    Foreground: voxels above `foreground_fraction` x the case's maximum (0: above 0), with enclosed holes filled
    when `fill_holes` (a head mask from an MR whose skull is dark). Background -> `background`. There is no
    inverse: a per-case scale is for inputs only.
    """

    low: float
    high: float
    foreground_fraction: float = 0.0
    fill_holes: bool = False
    background: float = -1.0


@dataclass(frozen=True)
class WindowNorm:
    """A fixed intensity window (e.g. CT [-1000, 3000] HU) mapped linearly to [-1, 1], clipped; the inverse maps
    back. Foreground: voxels above `low` (for CT, everything denser than air); background = -1 = `low`."""

    low: float
    high: float
    background: float = -1.0


@dataclass(frozen=True)
class ScaleNorm:
    """Per-case scaling that can also be an output: intensity 0 -> -1 and the case's `percentile` of its
    foreground (> 0) -> 1, clipped, so the scale follows each scan whatever its site's raw units. The inverse
    (for a synthesised modality, whose own scale is unknowable) maps [-1, 1] to [0, `output_high`]: outputs
    are written on a fixed scale. Background (0) -> `background`."""

    percentile: float = 99.5
    output_high: float = 1000.0
    background: float = -1.0


Normalization = ZScoreNorm | PercentileNorm | WindowNorm | ScaleNorm
"""Any per-modality intensity normalisation (what each does: `infer.engine.intensity`)."""

NORMALIZATION_KINDS: dict[str, type] = {"zscore": ZScoreNorm, "percentile": PercentileNorm, "window": WindowNorm,
                                        "scale": ScaleNorm}


def norm_to_json(norm: Normalization) -> dict[str, Any]:
    """JSON form of a normalisation: its fields, plus `kind` except for z-score (the format's original form)."""
    kind = next(k for k, cls in NORMALIZATION_KINDS.items() if isinstance(norm, cls))
    return asdict(norm) if kind == "zscore" else {"kind": kind, **asdict(norm)}


def norm_from_json(data: dict[str, Any]) -> Normalization:
    """Inverse of `norm_to_json`."""
    fields_ = dict(data)
    kind = fields_.pop("kind", "zscore")
    if kind not in NORMALIZATION_KINDS:
        raise ValueError(f"unknown normalisation kind {kind!r}; known: {', '.join(NORMALIZATION_KINDS)}")
    return NORMALIZATION_KINDS[kind](**fields_)
