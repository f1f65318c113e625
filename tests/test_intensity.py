import numpy as np

from infer.intensity import background_vote, denormalize, normalize
from infer.tasks import BRASYN_NORMALIZATION, ZScoreNorm


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
