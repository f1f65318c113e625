"""Slicing, square padding, 2.5D context, and the whole engine geometry with an identity model."""
import nibabel as nib
import numpy as np
import pytest

from infer.engine.slices import VolumePredictor
from infer.engine.geometry import crop_from_square, from_slices, in_plane_shape, pad_amounts, pad_to_square, to_slices, \
    with_context
from infer.engine.intensity import background_vote, denormalize, foreground, normalize
from conventions.tasks import BRASYN, VIEWS

from helpers import CopyModel, settings_for, synthetic_volumes

CASE = "BraTS-GLI-00000-000"


def identity_expected(volumes, source, target, settings):
    """What the engine must return when the model copies `source`: preprocessing, then the target's inverse."""
    norm = settings.normalization
    expected = denormalize(normalize(volumes[source], norm[source]), norm[target])
    expected[background_vote([foreground(v) for v in volumes.values()])] = settings.output_background
    return expected


def test_pad_rule():
    assert pad_amounts(155, 240) == (42, 43)
    assert pad_amounts(240, 240) == (0, 0)
    assert pad_amounts(23, 48) == (12, 13)
    with pytest.raises(ValueError, match="does not fit"):
        pad_amounts(241, 240)


def test_pad_and_crop_round_trip():
    slices = np.random.default_rng(0).normal(size=(2, 3, 155, 200)).astype(np.float32)
    padded = pad_to_square(slices, 240, -1.0)
    assert padded.shape == (2, 3, 240, 240)
    np.testing.assert_array_equal(padded[..., 42:197, 20:220], slices)
    inner = np.zeros((240, 240), dtype=bool)
    inner[42:197, 20:220] = True
    assert (padded[..., ~inner] == -1.0).all()
    np.testing.assert_array_equal(crop_from_square(padded, (155, 200)), slices)


def test_view_axis_convention():
    volume = np.arange(2 * 4 * 5 * 6).reshape(2, 4, 5, 6)  # (M, X, Y, Z)
    np.testing.assert_array_equal(to_slices(volume, "axial")[3], volume[:, :, :, 3])
    np.testing.assert_array_equal(to_slices(volume, "sagittal")[1], volume[:, 1, :, :])
    np.testing.assert_array_equal(to_slices(volume, "coronal")[2], volume[:, :, 2, :])
    for view in VIEWS:
        assert to_slices(volume, view).shape[-2:] == in_plane_shape(volume.shape[1:], view)
        np.testing.assert_array_equal(from_slices(to_slices(volume, view), view), volume)
    with pytest.raises(ValueError, match="unknown view"):
        to_slices(volume, "oblique")


def test_context_is_modality_major_with_background_edges():
    n, m = 5, 2
    slices = (10 * np.arange(n)[:, None] + np.arange(m)[None, :]).astype(np.float32)[:, :, None, None]
    out = with_context(slices, np.array([0, 2, 4]), 1, -1.0)[:, :, 0, 0]
    np.testing.assert_array_equal(out, [[-1, 0, 10, -1, 1, 11],
                                        [10, 20, 30, 11, 21, 31],
                                        [30, 40, -1, 31, 41, -1]])
    np.testing.assert_array_equal(with_context(slices, np.arange(n), 0, -1.0), slices)


@pytest.fixture(scope="module")
def real_volumes(brats_data):
    folder = brats_data / CASE
    return {m: nib.load(folder / f"{CASE}-{m}.nii.gz").get_fdata(dtype=np.float32) for m in ("t1c", "t1n", "t2w")}


@pytest.mark.parametrize("views", [("axial",), ("sagittal",), ("coronal",), ("axial", "sagittal", "coronal")])
def test_identity_model_returns_the_input_on_a_real_case(real_volumes, views):
    settings = settings_for(views)
    predictor = VolumePredictor(CopyModel(source=1), settings, batch_size=16)  # copies t1n
    out = predictor.predict(real_volumes, "t2f")
    assert out.shape == (240, 240, 155) and out.dtype == np.float32
    np.testing.assert_allclose(out, identity_expected(real_volumes, "t1n", "t2f", settings), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("views", [("axial",), ("sagittal",), ("coronal",), ("sagittal", "coronal")])
@pytest.mark.parametrize("k", [0, 1])
def test_identity_model_on_a_small_volume_with_odd_padding(views, k):
    volumes = synthetic_volumes((40, 36, 23))  # pads 8/0, 12/12, 12/13 or 6/6 depending on the plane
    settings = settings_for(views, image_size=48, k=k)
    out = VolumePredictor(CopyModel(source=3, k=k), settings, batch_size=7).predict(volumes, "t1n")
    np.testing.assert_array_equal(out.shape, (40, 36, 23))
    np.testing.assert_allclose(out, identity_expected(volumes, "t2w", "t1n", settings), rtol=1e-6, atol=1e-3)


def test_context_neighbour_is_the_previous_slice():
    volumes = synthetic_volumes((24, 20, 9), seed=1)
    settings = settings_for(("axial",), image_size=32, k=2)
    out = VolumePredictor(CopyModel(source=0, k=2, offset=-1), settings, batch_size=4).predict(volumes, "t1n")
    shifted = dict(volumes)
    shifted["t1c"] = np.concatenate([np.zeros_like(volumes["t1c"][:, :, :1]), volumes["t1c"][:, :, :-1]], axis=2)
    expected = denormalize(normalize(shifted["t1c"], BRASYN.normalization["t1c"]), BRASYN.normalization["t1n"])
    expected[background_vote([foreground(v) for v in volumes.values()])] = 0.0
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-3)

