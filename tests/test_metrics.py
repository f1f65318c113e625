"""Image metrics: known answers, and the separable SSIM against torchmetrics' dense 3D SSIM on small crops."""
from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

from infer.evaluate.metrics import (
    IMAGE_METRICS,
    challenge_ssim,
    image_metrics,
    percentile_normalize,
    ssim,
    ssim_map,
)
from conventions.regions import REGIONS, region_mask, tumour_mask

CASE = "BraTS-GLI-00000-000"


def _tm(pred: np.ndarray, target: np.ndarray, dtype=np.float32, **kw):
    return tm_ssim(torch.from_numpy(np.ascontiguousarray(pred, dtype=dtype))[None, None],
                   torch.from_numpy(np.ascontiguousarray(target, dtype=dtype))[None, None], **kw)


def _tm64(pred: np.ndarray, target: np.ndarray, **kw) -> float:
    """torchmetrics in float64: the exact value (its float32 variances lose digits on saturated plateaus)."""
    return float(_tm(pred, target, dtype=np.float64, **kw))


def _smooth_pair(shape=(40, 40, 40), seed=0):
    """A textured volume with a zero background border (brain-like) and a noisy, shifted copy."""
    rng = np.random.default_rng(seed)
    ref = rng.random(shape).astype(np.float32)
    ref = 0.5 * ref + 0.5 * np.roll(ref, 1, axis=0)
    ref[:4] = 0
    ref[:, -3:] = 0
    pred = np.roll(ref, 2, axis=1) + 0.1 * rng.standard_normal(shape).astype(np.float32)
    return np.clip(pred, 0, None), ref


def _numpy_percentile_normalize(v):
    lo, hi = np.percentile(v.astype(np.float32), [0.5, 99.5])
    lo = max(lo, 0.0)
    return np.clip((v.astype(np.float64) - lo) / (hi - lo), 0, 1)


def test_ssim_matches_torchmetrics_on_synthetic_crop():
    pred, ref = _smooth_pair()
    expected = float(_tm(pred, ref))
    assert ssim(pred, ref) == pytest.approx(expected, abs=1e-5)
    # The full map too, voxel by voxel (torchmetrics 1.9 returns it at full size, reflect-padded borders).
    _, tm_map = _tm(pred, ref, return_full_image=True)
    ours = ssim_map(pred, ref)
    assert ours.shape == tm_map.shape[2:]
    assert float((ours - tm_map[0, 0]).abs().max()) < 1e-4
    # Older torchmetrics cropped half a window at each border: border_crop=5 reproduces that average.
    assert ssim(pred, ref, border_crop=5) == pytest.approx(float(tm_map[0, 0, 5:-5, 5:-5, 5:-5].mean()), abs=1e-5)


def test_ssim_explicit_data_range_matches_torchmetrics():
    pred, ref = _smooth_pair(shape=(24, 30, 20), seed=3)
    assert ssim(pred, ref, data_range=2.0) == pytest.approx(float(_tm(pred, ref, data_range=2.0)), abs=1e-5)


def test_ssim_matches_torchmetrics_on_real_crop(brats_data):
    d = brats_data / CASE
    load = lambda m: np.asanyarray(nib.load(str(d / f"{CASE}-{m}.nii.gz")).dataobj)  # noqa: E731
    ref = percentile_normalize(load("t2f"))
    pred = percentile_normalize(load("t2w"))
    seg = load("seg")
    # A 32^3 crop through the tumour and the brain edge (background included), masked and unmasked. The
    # float64 reference is the exact value: torchmetrics' own float32 run drifts by a few 1e-5 on the clipped
    # plateau of the tumour (E[x^2] - mu^2 in float32); ours stays within 1e-5 of the exact value.
    zs, ys, xs = np.nonzero(seg)
    c = [int(np.mean(a)) for a in (zs, ys, xs)]
    box = tuple(slice(ci - 16, ci + 16) for ci in c)
    p, r, m = pred[box], ref[box], tumour_mask(seg[box]).astype(np.float32)
    assert 0 < m.mean() < 1
    for a, b in ((p, r), (p * m, r * m), (p * (1 - m), r * (1 - m))):
        ours, exact, tm32 = ssim(a, b), _tm64(a, b), float(_tm(a, b))
        assert ours == pytest.approx(exact, abs=1e-5)
        assert ours == pytest.approx(tm32, abs=1e-4)
    # A crop at the volume border that holds brain and background (reflect padding at the true border).
    box = (slice(100, 132), slice(100, 132), slice(0, 32))  # brain starts at slice 4
    assert (ref[box] > 0).any()
    assert ssim(pred[box], ref[box]) == pytest.approx(_tm64(pred[box], ref[box]), abs=1e-5)


def _tm_challenge(pred: np.ndarray, ref: np.ndarray) -> float:
    """The organisers' score: torchmetrics' SSIM map with 5 voxels cropped at each border (their release)."""
    _, full = _tm(pred, ref, return_full_image=True)
    return float(full[0, 0, 5:-5, 5:-5, 5:-5].mean())


def test_challenge_ssim_is_torchmetrics_on_masked_normalised_volumes():
    pred, ref = _smooth_pair(shape=(32, 36, 28), seed=1)
    ref_raw, pred_raw = ref * 1000, pred * 800 + 5
    seg = np.zeros(ref.shape, np.uint8)
    seg[10:18, 12:20, 8:14] = 2
    seg[12:16, 14:18, 9:12] = 3
    m = (seg > 0).astype(np.float32)
    p = _numpy_percentile_normalize(pred_raw).astype(np.float32)
    r = _numpy_percentile_normalize(ref_raw).astype(np.float32)
    got = challenge_ssim(pred_raw, ref_raw, seg)
    assert got["ssim_tumour"] == pytest.approx(_tm_challenge(p * m, r * m), abs=1e-5)
    assert got["ssim_healthy"] == pytest.approx(_tm_challenge(p * (1 - m), r * (1 - m)), abs=1e-5)
    uncropped = challenge_ssim(pred_raw, ref_raw, seg, border_crop=0)  # what torchmetrics 1.9 itself averages
    assert uncropped["ssim_tumour"] == pytest.approx(float(_tm(p * m, r * m)), abs=1e-5)
    # Background-dominated: the tumour score is high although the prediction is shifted and noisy.
    assert got["ssim_tumour"] > image_metrics(pred_raw, ref_raw, seg)["ssim_brain_tumour"]


def test_percentile_normalize_known_values():
    v = np.arange(1001, dtype=np.float32)  # percentiles 0.5 -> 5, 99.5 -> 995
    out = percentile_normalize(v)
    assert out.dtype == np.float32
    assert out[5] == 0 and out[995] == 1 and out[0] == 0 and out[1000] == 1
    assert out[500] == pytest.approx((500 - 5) / 990)
    # Lower bound never below 0.
    w = np.linspace(-100, 100, 1001, dtype=np.float32)
    assert percentile_normalize(w)[500] == pytest.approx(0.0, abs=1e-6)
    assert np.all(percentile_normalize(np.full((4, 4, 4), 7.0)) == 0)  # constant: all zeros


def test_identical_volumes():
    _, ref = _smooth_pair(shape=(30, 30, 24), seed=2)
    ref = ref * 3000
    seg = np.zeros(ref.shape, np.uint8)
    seg[10:16, 10:16, 8:12] = 1
    seg[12:14, 12:14, 9:11] = 3
    seg[8:18, 8:18, 6:14][seg[8:18, 8:18, 6:14] == 0] = 2
    out = image_metrics(ref.copy(), ref, seg)
    assert list(out) == list(IMAGE_METRICS)
    for k in IMAGE_METRICS:
        if k.startswith("ssim"):
            assert out[k] == pytest.approx(1.0, abs=1e-6), k
    assert out["psnr"] == math.inf  # documented: identical volumes give +inf, not a cap
    assert out["mae"] == 0.0 and out["mse"] == 0.0


def test_noised_copy_errors_match_numpy_formulas():
    rng = np.random.default_rng(5)
    _, ref = _smooth_pair(shape=(28, 32, 24), seed=4)
    ref = ref * 2000
    pred = np.clip(ref + rng.normal(0, 80, ref.shape), 0, None).astype(np.float32)
    out = image_metrics(pred, ref)
    brain = ref > 0
    p, r = _numpy_percentile_normalize(pred)[brain], _numpy_percentile_normalize(ref)[brain]
    mse = np.mean((p - r) ** 2)
    assert out["mae"] == pytest.approx(np.mean(np.abs(p - r)), rel=1e-5)
    assert out["mse"] == pytest.approx(mse, rel=1e-5)
    assert out["psnr"] == pytest.approx(10 * np.log10(1.0 / mse), rel=1e-5)
    # Brain-only SSIM = the torchmetrics map averaged over the brain.
    pn, rn = percentile_normalize(pred), percentile_normalize(ref)
    _, tm_map = _tm(pn, rn, return_full_image=True)
    assert out["ssim_brain"] == pytest.approx(float(tm_map[0, 0][torch.from_numpy(brain)].mean()), abs=1e-5)
    assert out["ssim_brain_healthy"] == pytest.approx(out["ssim_brain"], abs=1e-12)  # no seg: all brain healthy
    assert math.isnan(out["ssim_tumour"]) and math.isnan(out["ssim_brain_ET"])
    assert out["ssim_healthy"] == pytest.approx(_tm_challenge(pn, rn), abs=1e-5)  # no seg: unmasked volumes


def test_undefined_cases():
    z = np.zeros((12, 12, 12), np.float32)
    assert math.isnan(float(_tm(z, z)))  # what torchmetrics does ...
    assert ssim(z, z) == 1.0  # ... and what we define: identical constant inputs -> 1
    assert ssim(z, z + 0.5) == 1.0 - 1.0  # different constant inputs -> 0
    assert ssim(z + 0.5, z + 0.5) == 1.0
    v = np.random.default_rng(0).random((12, 12, 12)).astype(np.float32)
    assert math.isnan(ssim(v, v, mask=np.zeros(v.shape, bool)))  # empty region -> NaN
    empty = challenge_ssim(v * 100, v * 100, np.zeros(v.shape, np.uint8))
    assert math.isnan(empty["ssim_tumour"]) and empty["ssim_healthy"] == pytest.approx(1.0)
    full = challenge_ssim(v * 100, v * 100, np.ones(v.shape, np.uint8))
    assert math.isnan(full["ssim_healthy"]) and full["ssim_tumour"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        image_metrics(v, v[:-1])


def test_regions_follow_brats_labels():
    seg = np.array([0, 1, 2, 3])
    assert REGIONS == {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3)}
    assert region_mask(seg, "ET").tolist() == [False, False, False, True]
    assert region_mask(seg, "TC").tolist() == [False, True, False, True]
    assert region_mask(seg, "WT").tolist() == [False, True, True, True]
    assert tumour_mask(seg).tolist() == [False, True, True, True]
    with pytest.raises(ValueError):
        region_mask(seg, "NCR")
