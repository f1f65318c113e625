"""Dice / NSD / HD95 per BraTS region on hand-made masks, and the empty-mask conventions."""
from __future__ import annotations

import math

import numpy as np
import pytest

from infer.evaluate.segmetrics import image_diagonal_mm, mask_scores, seg_metric_names, segmentation_metrics


def _cube(lo, size=5, shape=(20, 20, 20)):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + size) for a in lo)] = True
    return m


def _edges(m):
    """Mask voxels with a 6-neighbour outside the mask (what MONAI's erosion-based edges are)."""
    p = np.pad(m, 1)
    inner = p[1:-1, 1:-1, 1:-1].copy()
    for ax in range(3):
        for s in (-1, 1):
            inner &= np.roll(p, s, axis=ax)[1:-1, 1:-1, 1:-1]
    return m & ~inner


def _directed(a, b, spacing):
    pa = np.argwhere(_edges(a)) * np.asarray(spacing)
    pb = np.argwhere(_edges(b)) * np.asarray(spacing)
    return np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1)).min(1)


def test_cubes_offset_by_two_voxels():
    a, b = _cube((5, 5, 5)), _cube((7, 5, 5))
    s = mask_scores(b, a)
    # Dice by hand: overlap 3x5x5 = 75 of 125 + 125 voxels.
    assert s["dice"] == pytest.approx(2 * 75 / 250)
    # HD95 by hand: no boundary voxel is more than 2 voxels from the other boundary, and the 25 voxels of the
    # leading face (25 of 98 boundary voxels, > 5 %) are exactly 2 away, so the 95th percentile is 2 (both ways).
    assert s["hd95"] == pytest.approx(2.0)
    # NSD at 1 mm: boundary voxels within 1 mm of the other boundary, over all boundary voxels (brute force).
    d_ab, d_ba = _directed(a, b, (1, 1, 1)), _directed(b, a, (1, 1, 1))
    assert len(d_ab) == 98 and np.sum(d_ab == 2) >= 25 and d_ab.max() == 2
    expected = (np.sum(d_ab <= 1) + np.sum(d_ba <= 1)) / (len(d_ab) + len(d_ba))
    assert s["nsd"] == pytest.approx(expected)
    assert s["nsd"] == pytest.approx(72 / 98)
    assert mask_scores(b, a, tolerance_mm=2.0)["nsd"] == pytest.approx(1.0)  # everything within 2 mm
    assert mask_scores(a, a) == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0}


def test_spacing_from_header_scales_distances():
    a, b = _cube((5, 5, 5)), _cube((7, 5, 5))
    s = mask_scores(b, a, spacing=(2.0, 1.0, 1.0))  # the offset axis is 2 mm per voxel
    assert s["hd95"] == pytest.approx(4.0)
    d_ab, d_ba = _directed(b, a, (2, 1, 1)), _directed(a, b, (2, 1, 1))
    expected = (np.sum(d_ab <= 1) + np.sum(d_ba <= 1)) / (len(d_ab) + len(d_ba))
    assert s["nsd"] == pytest.approx(expected)
    assert s["dice"] == pytest.approx(0.6)  # unaffected by spacing


def test_empty_masks():
    e = np.zeros((240, 240, 155), bool)
    a = e.copy()
    a[100:110, 100:110, 70:80] = True
    assert mask_scores(e, e) == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0}
    cap = image_diagonal_mm(e.shape, (1.0, 1.0, 1.0))
    assert cap == pytest.approx(373.13, abs=0.01)  # BraTS' value for 240x240x155 at 1 mm
    for p, r in ((a, e), (e, a)):
        assert mask_scores(p, r, spacing=(1, 1, 1)) == {"dice": 0.0, "nsd": 0.0, "hd95": pytest.approx(cap)}
    assert mask_scores(a, e, hd95_cap=100.0)["hd95"] == 100.0


def test_segmentation_metrics_per_region():
    ref = np.zeros((24, 24, 24), np.uint8)
    ref[6:18, 6:18, 6:18] = 2  # oedema
    ref[9:15, 9:15, 9:15] = 1  # necrotic core
    ref[11:13, 11:13, 11:13] = 3  # enhancing
    cols = seg_metric_names()
    same = segmentation_metrics(ref, ref, spacing=(1, 1, 1))
    assert list(same) == list(cols)
    assert all(same[f"dice_{r}"] == 1 and same[f"nsd_{r}"] == 1 and same[f"hd95_{r}"] == 0 for r in ("ET", "TC", "WT"))

    pred = ref.copy()
    pred[pred == 3] = 1  # ET missed, labelled as core instead: TC and WT unchanged
    out = segmentation_metrics(pred, ref, spacing=(1, 1, 1))
    assert out["dice_ET"] == 0 and out["nsd_ET"] == 0
    assert out["hd95_ET"] == pytest.approx(image_diagonal_mm(ref.shape, (1, 1, 1)))
    assert out["dice_TC"] == 1 and out["dice_WT"] == 1

    pred = ref.copy()
    pred[pred == 2] = 0  # oedema missed: WT shrinks to TC (6^3 of 12^3 voxels)
    out = segmentation_metrics(pred, ref, spacing=(1, 1, 1))
    assert out["dice_WT"] == pytest.approx(2 * 216 / (216 + 1728))
    assert out["dice_TC"] == 1 and out["dice_ET"] == 1
    wt_p, wt_r = pred > 0, ref > 0  # HD95 = larger of the two directed 95th percentiles (brute force)
    d1, d2 = _directed(wt_p, wt_r, (1, 1, 1)), _directed(wt_r, wt_p, (1, 1, 1))
    assert d1.min() == 3.0  # TC faces are 3 voxels inside the WT faces; cube edges and corners are further
    assert out["hd95_WT"] == pytest.approx(max(np.percentile(d1, 95), np.percentile(d2, 95)), rel=1e-5)

    no_tumour = np.zeros_like(ref)
    out = segmentation_metrics(no_tumour, no_tumour)
    assert all(out[f"dice_{r}"] == 1 and out[f"hd95_{r}"] == 0 for r in ("ET", "TC", "WT"))
    assert not any(math.isnan(v) for v in out.values())


def test_extra_nsd_tolerances_equal_separate_calls():
    rng = np.random.default_rng(3)
    ref = np.zeros((24, 24, 16), np.uint8)
    ref[6:16, 5:17, 4:12] = 2
    ref[8:13, 8:14, 6:10] = 3
    pred = np.roll(ref, (1, -2, 1), axis=(0, 1, 2))
    pred[rng.random(ref.shape) < 0.01] = 1
    spacing = (1.0, 1.0, 1.5)
    combined = segmentation_metrics(pred, ref, spacing, 1.0, extra_nsd_mm=(2.0,))
    assert {k: v for k, v in combined.items() if not k.startswith("nsd2mm")} == segmentation_metrics(pred, ref, spacing, 1.0)
    at_2mm = segmentation_metrics(pred, ref, spacing, 2.0)
    assert all(combined[f"nsd2mm_{r}"] == at_2mm[f"nsd_{r}"] for r in ("ET", "TC", "WT"))
    empty = segmentation_metrics(np.zeros_like(ref), ref, spacing, extra_nsd_mm=(2.0,))
    assert empty["nsd2mm_WT"] == 0.0 and empty["nsd_WT"] == 0.0
