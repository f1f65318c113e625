"""Downstream segmentation metrics per BraTS region (ET, TC, WT): Dice, NSD and HD95, computed by MONAI.

MONAI's functions (`compute_dice`, `compute_surface_dice`, `compute_hausdorff_distance` with percentile 95) do
the work, on the physical voxel spacing. MONAI gives NaN/inf when a mask is empty; the conventions here are:

| reference | prediction | Dice | NSD | HD95 |
| --- | --- | --- | --- | --- |
| empty | empty | 1 | 1 | 0 |
| empty | not empty, or the reverse | 0 | 0 | cap |

The HD95 cap is the diagonal of the image in mm (``sqrt(sum((shape * spacing)^2))``), which is BraTS' 373.13
for a 240x240x155 volume at 1 mm. NSD counts boundary voxels (MONAI's mask edges) of either mask that lie within
``tolerance`` mm of the other mask's boundary, divided by the number of boundary voxels of both.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from conventions.regions import REGION_NAMES, region_mask

SEG_METRICS: tuple[str, ...] = ("dice", "nsd", "hd95")
DEFAULT_NSD_TOLERANCE_MM: float = 1.0


def seg_metric_names(regions: Sequence[str] = REGION_NAMES) -> tuple[str, ...]:
    """Column names of `segmentation_metrics`: ``dice_ET``, ``dice_TC``, ..., ``hd95_WT``."""
    return tuple(f"{m}_{r}" for m in SEG_METRICS for r in regions)


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the image diagonal in mm (the HD95 cap for empty-mask cases)."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def _monai():
    # Imported lazily: monai is heavy and only needed when segmentations are scored.
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    return compute_dice, compute_hausdorff_distance, compute_surface_dice


def _crop_to_union(pred: np.ndarray, ref: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Crop both masks to the bounding box of their union plus a margin (distances are translation invariant)."""
    union = pred | ref
    box = []
    for d in range(union.ndim):
        other = tuple(i for i in range(union.ndim) if i != d)
        idx = np.flatnonzero(union.any(axis=other))
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, union.shape[d])))
    return pred[tuple(box)], ref[tuple(box)]


def mask_scores(
    pred: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float] | None = None,
    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    hd95_cap: float | None = None,
    extra_nsd_mm: Sequence[float] = (),
) -> dict[str, float]:
    """Dice, NSD at `tolerance_mm` and HD95 (mm) of two boolean masks (`spacing` in mm per axis, default 1),
    plus NSD at each of `extra_nsd_mm` (keys `nsd_key(t)`, e.g. ``nsd2mm``) from the same distances.

    Empty masks follow the table in the module docstring; `hd95_cap` defaults to the image diagonal in mm.
    """
    pred = np.asarray(pred, dtype=bool)
    reference = np.asarray(reference, dtype=bool)
    if pred.shape != reference.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs reference {reference.shape}")
    spacing = tuple(float(s) for s in (spacing if spacing is not None else (1.0,) * pred.ndim))
    if hd95_cap is None:
        hd95_cap = image_diagonal_mm(pred.shape, spacing)
    has_p, has_r = bool(pred.any()), bool(reference.any())
    extra = [nsd_key(t) for t in extra_nsd_mm]
    if not has_p and not has_r:
        return {"dice": 1.0, "nsd": 1.0, "hd95": 0.0, **dict.fromkeys(extra, 1.0)}
    if not (has_p and has_r):
        return {"dice": 0.0, "nsd": 0.0, "hd95": float(hd95_cap), **dict.fromkeys(extra, 0.0)}
    compute_dice, compute_hausdorff_distance, compute_surface_dice = _monai()
    p, r = _crop_to_union(pred, reference)
    yp = torch.from_numpy(np.ascontiguousarray(p))[None, None]
    yr = torch.from_numpy(np.ascontiguousarray(r))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI deprecation chatter from inside its own helpers
        dice = compute_dice(yp, yr, include_background=True)
        nsd = [float(compute_surface_dice(yp, yr, class_thresholds=[float(t)], include_background=True,
                                          spacing=list(spacing)).item()) for t in (tolerance_mm, *extra_nsd_mm)]
        hd = compute_hausdorff_distance(yp, yr, include_background=True, percentile=95, spacing=list(spacing))
    return {"dice": float(dice.item()), "nsd": nsd[0], "hd95": min(float(hd.item()), float(hd95_cap)),
            **dict(zip(extra, nsd[1:]))}


def nsd_key(tolerance_mm: float) -> str:
    """Key of the NSD at an extra tolerance (``nsd2mm`` for 2 mm)."""
    return f"nsd{tolerance_mm:g}mm"


def segmentation_metrics(
    pred_seg: np.ndarray,
    ref_seg: np.ndarray,
    spacing: Sequence[float] | None = None,
    tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM,
    regions: Sequence[str] = REGION_NAMES,
    extra_nsd_mm: Sequence[float] = (),
) -> dict[str, float]:
    """Dice/NSD/HD95 of a BraTS label map against the reference for each region; keys from `seg_metric_names`,
    plus ``nsd2mm_ET`` etc. for each of `extra_nsd_mm` (see `mask_scores`)."""
    pred_seg = np.asarray(pred_seg)
    ref_seg = np.asarray(ref_seg)
    if pred_seg.shape != ref_seg.shape:
        raise ValueError(f"shape mismatch: segmentation {pred_seg.shape} vs reference {ref_seg.shape}")
    spacing = tuple(spacing) if spacing is not None else (1.0,) * ref_seg.ndim
    cap = image_diagonal_mm(ref_seg.shape, spacing)
    out: dict[str, float] = {}
    scores = {
        r: mask_scores(region_mask(pred_seg, r), region_mask(ref_seg, r), spacing, tolerance_mm, cap, extra_nsd_mm)
        for r in regions
    }
    for m in (*SEG_METRICS, *(nsd_key(t) for t in extra_nsd_mm)):
        for r in regions:
            out[f"{m}_{r}"] = scores[r][m]
    return out
