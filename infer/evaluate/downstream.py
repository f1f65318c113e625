"""The BraSyn downstream protocol: a tumour segmenter runs on each case completed with the synthesised modality,
and its regions are scored against the reference labels next to the same segmenter on (a) the four real
modalities, the upper bound, and (b) the case completed by each trivial baseline instead.

Rows of `infer.evaluate.scoring` with source ``downstream_<completion>`` (completion = ``real``, ``prediction``,
``baseline_mean``, ``baseline_copy``) and modality = the modality that was missing carry Dice, NSD at 1 mm
(``nsd_*``) and at 2 mm (``nsd2mm_*``) and HD95 per region (ET, TC, WT).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from conventions.regions import REGION_NAMES
from infer.evaluate.segmetrics import nsd_key, segmentation_metrics

Segmenter = Callable[[Mapping[str, np.ndarray], np.ndarray], np.ndarray]
"""(four raw modalities t1c, t1n, t2f, t2w, their 4x4 affine) -> a label map in the 2023 labels on their grid."""

DOWNSTREAM_PREFIX = "downstream_"
REAL = "real"
NSD2_COLUMNS: tuple[str, ...] = tuple(f"{nsd_key(2.0)}_{r}" for r in REGION_NAMES)


def downstream_source(completion: str) -> str:
    """Row source of the segmentation of one completion (``downstream_prediction``, ...)."""
    return f"{DOWNSTREAM_PREFIX}{completion}"


def score_labels(labels: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Dice, NSD at 1 mm and 2 mm and HD95 per region of a label map against the reference labels (one pass:
    Dice and HD95 are computed once)."""
    return segmentation_metrics(labels, reference, spacing, tolerance_mm=1.0, extra_nsd_mm=(2.0,))


def completions(real: Mapping[str, np.ndarray], missing: str, stand_ins: Mapping[str, np.ndarray]
                ) -> dict[str, dict[str, np.ndarray]]:
    """Each stand-in (completion name -> volume of `missing`) put in place of the real `missing` modality."""
    return {name: {**real, missing: volume} for name, volume in stand_ins.items()}
