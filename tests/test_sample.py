"""Synthetic BraTS-format sample cases."""
import nibabel as nib
import numpy as np
import pytest

from infer.sample import AFFINE, SHAPE, main, make_case
from conventions.tasks import BRATS_MODALITIES


@pytest.fixture(scope="module")
def case():
    return make_case("BraTS-SYN-00000-000", seed=0)


def region_median(case, modality, mask):
    return float(np.median(case.images[modality][mask]))


def test_geometry_and_types(case):
    for volume in case.images.values():
        assert volume.shape == SHAPE and volume.dtype == np.int16 and volume.min() == 0
    brain = case.images["t1n"] > 0
    assert all(np.array_equal(v > 0, brain) for v in case.images.values())  # skull-stripped, shared mask
    assert 0.1 < brain.mean() < 0.25
    assert set(np.unique(case.seg)) == {0, 1, 2, 3}
    assert (case.seg > 0).sum() < brain.sum() * 0.2 and np.all(brain[case.seg > 0])


def test_contrast_relations(case):
    brain = case.images["t1n"] > 0
    et, netc, ed = case.seg == 3, case.seg == 1, case.seg == 2
    healthy = brain & (case.seg == 0)
    t2w = case.images["t2w"]
    csf = healthy & (t2w > np.percentile(t2w[healthy], 97))
    wm = healthy & (case.images["t1n"] > np.percentile(case.images["t1n"][healthy], 60))
    assert region_median(case, "t1c", et) > 1.8 * region_median(case, "t1c", wm)  # enhancing rim
    assert region_median(case, "t1c", netc) < region_median(case, "t1c", et)  # necrotic core does not enhance
    assert region_median(case, "t2f", ed) > 1.3 * region_median(case, "t2f", wm)  # oedema bright on FLAIR
    assert region_median(case, "t2f", csf) < region_median(case, "t2f", wm)  # FLAIR suppresses CSF
    assert region_median(case, "t1n", csf) < region_median(case, "t1n", wm)


def test_command_writes_brats_layout_with_drop(tmp_path):
    assert main(["--output", str(tmp_path), "--cases", "2", "--seed", "5", "--drop", "t2w"]) == 0
    cases = sorted(p.name for p in tmp_path.iterdir())
    assert cases == ["BraTS-SYN-00005-000", "BraTS-SYN-00006-000"]
    files = sorted(p.name for p in (tmp_path / cases[0]).iterdir())
    assert files == [f"{cases[0]}-{m}.nii.gz" for m in ("seg", "t1c", "t1n", "t2f")]
    image = nib.load(tmp_path / cases[0] / f"{cases[0]}-t1c.nii.gz")
    np.testing.assert_array_equal(image.affine, AFFINE)
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    again = make_case(cases[0], 5)
    np.testing.assert_array_equal(np.asarray(image.dataobj), again.images["t1c"])  # seeded, reproducible
    assert set(BRATS_MODALITIES) - {"t2w"} <= {f.split("-")[-1].split(".")[0] for f in files}


def test_t1n_is_blurrier_than_t1c_as_in_real_brats(case, brats_data):
    """Real BraTS t1n is a lower-resolution acquisition than t1c; the phantom keeps the relation."""
    def sharpness(volume):
        brain = volume[:, :, :-1] > 0
        return np.abs(np.diff(volume.astype(np.float32), axis=2))[brain].mean() / volume[volume > 0].mean()

    real = {m: np.asarray(nib.load(brats_data / "BraTS-GLI-00000-000" / f"BraTS-GLI-00000-000-{m}.nii.gz").dataobj)
            for m in ("t1c", "t1n")}
    assert sharpness(real["t1n"]) < 0.7 * sharpness(real["t1c"])
    assert sharpness(case.images["t1n"]) < 0.7 * sharpness(case.images["t1c"])
