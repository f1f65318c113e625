import json

import numpy as np
import pytest

from infer.engine.intensity import background_vote, denormalize, foreground, normalize
from conventions.normalization import PercentileNorm, WindowNorm, ZScoreNorm, norm_from_json, norm_to_json
from conventions.tasks import BRASYN_NORMALIZATION


def test_normalize_known_values():
    norm = ZScoreNorm(clip_max=100.0, mean=10.0, std=5.0)
    v = np.array([-3.0, 0.0, 10.0, 20.0, 500.0], dtype=np.int16)
    out = normalize(v, norm)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, -1.0, 0.0, 2.0, 18.0])


def test_denormalize_inverts_inside_clip_range():
    norm = BRASYN_NORMALIZATION["t1c"]
    v = np.array([1.0, 500.0, 8000.0], dtype=np.float32)
    np.testing.assert_allclose(denormalize(normalize(v, norm), norm), v, rtol=1e-5)
    assert denormalize(np.array([-5.0]), norm)[0] == 0.0


def test_background_vote_majority():
    a = np.array([1, 1, 0, 0], dtype=bool)
    b = np.array([1, 0, 0, 1], dtype=bool)
    c = np.array([1, 0, 1, 0], dtype=bool)
    np.testing.assert_array_equal(background_vote([a, b, c]), [False, True, True, True])
    np.testing.assert_array_equal(background_vote([a]), ~a)


def test_window_norm_maps_hounsfield_units_and_back():
    norm = WindowNorm(low=-1000.0, high=3000.0)
    hu = np.array([-1024.0, -1000.0, 0.0, 1000.0, 3000.0, 4000.0], dtype=np.float32)
    out = normalize(hu, norm)
    np.testing.assert_allclose(out, [-1.0, -1.0, -0.5, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(denormalize(out, norm), [-1000.0, -1000.0, 0.0, 1000.0, 3000.0, 3000.0])
    np.testing.assert_array_equal(foreground(hu, norm), [False, False, True, True, True, True])


def test_percentile_norm_uses_the_cases_own_foreground_percentiles():
    rng = np.random.default_rng(0)
    v = np.zeros((20, 20, 20), dtype=np.float32)
    v[4:16, 4:16, 4:16] = rng.uniform(100.0, 200.0, (12, 12, 12))
    norm = PercentileNorm(low=1.0, high=99.0)
    out = normalize(v, norm)
    low, high = np.percentile(v[v > 0], [1.0, 99.0])
    inside = v > 0
    np.testing.assert_allclose(out[inside], np.clip((v[inside] - low) / (high - low) * 2 - 1, -1, 1), atol=1e-5)
    assert (out[~inside] == -1.0).all()
    np.testing.assert_allclose(normalize(3 * v, norm), out, atol=1e-5)  # per case: scale-free
    with pytest.raises(ValueError, match="cannot be inverted"):
        denormalize(out, norm)


def test_percentile_foreground_is_a_filled_head_mask():
    v = np.full((30, 30, 30), 5.0, dtype=np.float32)  # air noise
    v[5:25, 5:25, 5:25] = 1000.0  # scalp
    v[8:22, 8:22, 8:22] = 20.0  # dark skull: above the noise, below the threshold
    v[11:19, 11:19, 11:19] = 800.0  # brain
    mask = foreground(v, PercentileNorm(low=1.0, high=99.9, foreground_fraction=0.05, fill_holes=True))
    expected = np.zeros_like(mask)
    expected[5:25, 5:25, 5:25] = True
    np.testing.assert_array_equal(mask, expected)


def test_normalisations_round_trip_through_json():
    for norm in (BRASYN_NORMALIZATION["t2w"], PercentileNorm(2.0, 98.0, 0.01), WindowNorm(-1000.0, 3000.0)):
        assert norm_from_json(json.loads(json.dumps(norm_to_json(norm)))) == norm
    assert "kind" not in norm_to_json(BRASYN_NORMALIZATION["t2w"])  # z-score keeps the original format
