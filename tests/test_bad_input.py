"""Each kind of bad input: a one-line error naming the case and file, the case skipped, the others processed,
a non-zero exit with a summary, and never a traceback."""
import nibabel as nib
import numpy as np
import pytest


from helpers import AFFINE, SMALL_SHAPE, run_cli, snapshot, write_case

BAD = "case-b"


def replace_volume(folder, modality, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(data, affine), folder / f"{BAD}-{modality}.nii.gz")


def all_four(folder):
    write_case(folder.parent, BAD, ("t1c", "t1n", "t2f", "t2w"))
    return None, "found 4 input modalities (t1c, t1n, t2f, t2w), task brasyn needs 3"


def only_two(folder):
    (folder / f"{BAD}-t2w.nii.gz").unlink()
    return None, "found 2 input modalities (t1c, t1n), task brasyn needs 3"


def shape_mismatch(folder):
    replace_volume(folder, "t2w", np.ones((14, 12, 8), dtype=np.int16))
    return "t2w", "shape (14, 12, 8) differs from (14, 12, 9) of case-b-t1c.nii.gz"


def affine_mismatch(folder):
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.0
    replace_volume(folder, "t1n", np.ones(SMALL_SHAPE, dtype=np.int16), shifted)
    return "t1n", "affine differs from that of case-b-t1c.nii.gz"


def nan_values(folder):
    data = np.ones(SMALL_SHAPE, dtype=np.float32)
    data[3, 4, 5] = np.nan
    replace_volume(folder, "t1n", data)
    return "t1n", "1 voxels are NaN or infinite"


def inf_values(folder):
    data = np.ones(SMALL_SHAPE, dtype=np.float32)
    data[:2, 0, 0] = np.inf
    replace_volume(folder, "t2w", data)
    return "t2w", "2 voxels are NaN or infinite"


def unreadable(folder):
    (folder / f"{BAD}-t1c.nii.gz").write_bytes(b"not an image at all")
    return "t1c", "unreadable"


def truncated(folder):
    path = folder / f"{BAD}-t1n.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "t1n", "unreadable"


def not_3d(folder):
    replace_volume(folder, "t1c", np.ones((*SMALL_SHAPE, 2), dtype=np.int16))
    return "t1c", "not a 3D image (shape (14, 12, 9, 2))"


def unknown_name(folder):
    (folder / f"{BAD}-flair.nii.gz").write_bytes(b"")
    return "flair", "unknown or duplicate file name (expected case-b-<modality>.nii.gz"


def empty_volume(folder):
    replace_volume(folder, "t2w", np.zeros(SMALL_SHAPE, dtype=np.int16))
    return "t2w", "empty volume (no voxel above 0)"


def too_large(folder):
    for modality in ("t1c", "t1n", "t2w"):
        replace_volume(folder, modality, np.ones((40, 12, 9), dtype=np.int16))
    return None, "axial slices of 40x12 exceed the model's 32x32 input"


@pytest.mark.parametrize("make_bad", [all_four, only_two, shape_mismatch, affine_mismatch, nan_values, inf_values,
                                      unreadable, truncated, not_3d, unknown_name, empty_volume, too_large])
def test_bad_case_is_reported_and_skipped(make_bad, small_checkpoint, tmp_path, capsys):
    write_case(tmp_path / "in", "case-a", ("t1c", "t1n", "t2w"))
    bad_file, message = make_bad(write_case(tmp_path / "in", BAD, ("t1c", "t1n", "t2w"), seed=1))
    write_case(tmp_path / "in", "case-c", ("t1n", "t2f", "t2w"), seed=2)
    before = snapshot(tmp_path / "in")

    assert run_cli(tmp_path / "in", tmp_path / "out", small_checkpoint) == 1

    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case-a-t2f.nii.gz", "case-c-t1c.nii.gz"]
    assert snapshot(tmp_path / "in") == before
    err = capsys.readouterr().err
    where = f"{BAD}: {BAD}-{bad_file}.nii.gz" if bad_file else BAD
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and error_lines[0].startswith(f"error: {where}: {message}"), err
    assert f"failed: {where}: {message}" in err
    assert "3 case(s): 2 written, 0 skipped (output exists), 1 failed" in err
    assert "Traceback" not in err
