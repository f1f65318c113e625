"""The slice-consistency measure (mean |d_z(pred) - d_z(ref)| over brain voxel pairs) and its evaluation column."""
import math

import nibabel as nib
import numpy as np
import pytest

from infer.evaluate.scoring import evaluate, format_summary
from infer.evaluate.metrics import image_metrics, percentile_normalize, slice_gradient_mae


def smooth_volume(shape=(12, 10, 16), seed=0):
    rng = np.random.default_rng(seed)
    z = np.linspace(0, 1, shape[2])
    return (rng.uniform(0.2, 0.8, shape[:2])[:, :, None] + 0.1 * z).astype(np.float32)


def test_identical_volumes_and_a_constant_offset_cost_nothing():
    ref = smooth_volume()
    assert slice_gradient_mae(ref, ref) == 0.0
    assert slice_gradient_mae(ref + 0.25, ref) == pytest.approx(0.0, abs=1e-7)


def test_alternating_slice_offsets_cost_twice_their_size():
    ref = smooth_volume()
    striped = ref + np.where(np.arange(ref.shape[2]) % 2, 0.05, -0.05).astype(np.float32)
    assert slice_gradient_mae(striped, ref) == pytest.approx(0.1, rel=1e-5)
    # the same stripes across another axis do not change from slice to slice along the axial axis
    across = ref + np.where(np.arange(ref.shape[0]) % 2, 0.05, -0.05).astype(np.float32)[:, None, None]
    assert slice_gradient_mae(across, ref) == pytest.approx(0.0, abs=1e-7)
    assert slice_gradient_mae(across, ref, axis=0) == pytest.approx(0.1, rel=1e-5)


def test_only_pairs_of_brain_voxels_count():
    ref = smooth_volume()
    pred = ref.copy()
    pred[:, :, 8:] += np.where(np.arange(8) % 2, 0.3, 0.0)  # stripes in the upper half only
    brain = np.zeros(ref.shape, dtype=bool)
    brain[:, :, :8] = True  # slices 0..7: pairs (0,1) .. (6,7), none reaching the stripes
    assert slice_gradient_mae(pred, ref, brain) == pytest.approx(0.0, abs=1e-7)
    brain[:, :, 8] = True  # adds the pair (7, 8): slice 8 is not offset, so still nothing
    assert slice_gradient_mae(pred, ref, brain) == pytest.approx(0.0, abs=1e-7)
    brain[:, :, 9] = True  # adds (8, 9), offset by 0.3 on one side
    assert slice_gradient_mae(pred, ref, brain) == pytest.approx(0.3 / 9, rel=1e-5)
    assert math.isnan(slice_gradient_mae(pred, ref, np.zeros(ref.shape, dtype=bool)))


def test_image_metrics_report_it_on_the_percentile_scale_over_the_brain():
    rng = np.random.default_rng(1)
    ref = np.zeros((20, 20, 16), dtype=np.float32)
    ref[3:17, 3:17, 2:14] = rng.uniform(100, 1000, (14, 14, 12))
    pred = ref * np.where(np.arange(16) % 2, 1.1, 0.9).astype(np.float32)
    expected = slice_gradient_mae(percentile_normalize(pred), percentile_normalize(ref), ref > 0)
    assert image_metrics(pred, ref)["slice_gradient_mae"] == pytest.approx(expected)
    assert expected > 0.01


def test_the_evaluation_reports_a_slice_consistency_column(tmp_path):
    ref = np.zeros((16, 16, 12), dtype=np.float32)
    ref[2:14, 2:14, 1:11] = np.random.default_rng(2).uniform(100, 1000, (12, 12, 10))
    case = "BraTS-GLI-00042-000"
    (tmp_path / case).mkdir()
    for modality in ("t1c", "t1n", "t2f", "t2w"):
        nib.save(nib.Nifti1Image(ref, np.eye(4)), tmp_path / case / f"{case}-{modality}.nii.gz")
    striped = ref * np.where(np.arange(12) % 2, 1.2, 0.8).astype(np.float32)
    result = evaluate(tmp_path, {case: {"t2f": striped}}, progress=False, log=lambda _: None)
    (row,) = result.ok_rows
    assert row["slice_gradient_mae"] > 0.05
    assert "slice_gradient_mae" in format_summary(result.summary())
