"""The 2018-2021 BraTS naming: file names, labels, discovery, outputs in the input's convention, training
cases and the fixed split, evaluation with labels read as 2023 regions, and the per-case scale."""
import json

import nibabel as nib
import numpy as np
import pytest

from infer.evaluate import scoring as ev
from infer.engine.cases import CaseError, check_case, discover_cases, read_split
from infer.holdout import sanity_counts
from infer.engine.intensity import denormalize, normalize
from conventions.naming import BRATS_2018, BRATS_2023, naming_of_segmentation
from conventions.normalization import ScaleNorm, norm_from_json, norm_to_json
from conventions.tasks import BRASYN, BRASYN_CASE_NORMALIZATION
from train.data.cases import find_cases, load_case
from train.config import load_config
from train.run import training_cases

from helpers import AFFINE, run_cli, save_tiny_checkpoint, snapshot, synthetic_volumes

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
SPLIT = REPO / "train" / "splits" / "brats18.json"
CASE = "Brats18_TCIA10_639_1"  # a validation case (low grade)


def test_naming_rules():
    assert BRATS_2018.file_name("c", "t2f") == "c_flair.nii.gz" and BRATS_2023.file_name("c", "t2f") == "c-t2f.nii.gz"
    assert [BRATS_2018.token(m) for m in BRASYN.modalities] == ["t1ce", "t1", "flair", "t2"]
    assert BRATS_2018.modality("t1ce") == "t1c" and BRATS_2018.modality("seg") == "seg"
    stored = np.array([0, 1, 2, 4, 4], dtype=np.uint8)
    assert BRATS_2018.read_labels(stored).tolist() == [0, 1, 2, 3, 3]
    assert stored.tolist() == [0, 1, 2, 4, 4]  # mapped on reading, the stored labels untouched
    assert BRATS_2023.read_labels(np.array([0, 3])).tolist() == [0, 3]
    assert naming_of_segmentation("x_seg.nii.gz") is BRATS_2018
    assert naming_of_segmentation("x-seg.nii.gz") is BRATS_2023 and naming_of_segmentation("x.nii.gz") is BRATS_2023


def _write(folder, names, shape=(12, 10, 8)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        volume = synthetic_volumes(shape, seed=i, modalities=("x",))["x"]
        nib.save(nib.Nifti1Image(volume.astype(np.int16), AFFINE), folder / name)


def test_discovery_of_both_conventions_and_mixed_cases(tmp_path):
    _write(tmp_path / "Brats18_A_1", [f"Brats18_A_1_{t}.nii.gz" for t in ("t1", "t1ce", "t2", "seg")])
    _write(tmp_path, ["flat_x_flair.nii.gz", "flat_x_t1.nii.gz", "flat_x_t2.nii.gz"])
    _write(tmp_path / "mixed", ["mixed-t1c.nii.gz", "mixed_t1.nii.gz", "mixed_t2.nii.gz"])
    cases = {c.name: c for c in discover_cases(tmp_path, BRASYN)}
    assert sorted(cases) == ["Brats18_A_1", "flat_x", "mixed"]
    assert check_case(cases["Brats18_A_1"], BRASYN) == ("t2f",)
    assert check_case(cases["flat_x"], BRASYN) == ("t1c",)
    with pytest.raises(CaseError, match=r"^mixed: mixed_t1.nii.gz: mixes naming conventions: mixed-t1c.nii.gz"):
        check_case(cases["mixed"], BRASYN)


def test_old_layout_case_through_infer_and_evaluate(brats18_data, tmp_path, capsys):
    weights = save_tiny_checkpoint(tmp_path / "ckpt", image_size=240)
    case_in = tmp_path / "in" / CASE
    case_in.mkdir(parents=True)
    for token in ("t1", "t1ce", "t2"):  # FLAIR missing
        (case_in / f"{CASE}_{token}.nii.gz").symlink_to(brats18_data / CASE / f"{CASE}_{token}.nii.gz")
    _write(tmp_path / "in" / "bad", ["bad-t1c.nii.gz", "bad_t1.nii.gz", "bad_t2.nii.gz"])
    before = snapshot(tmp_path / "in")

    assert run_cli(tmp_path / "in", tmp_path / "out", weights, "--batch-size", "32") == 1  # the mixed case fails
    err = capsys.readouterr().err
    assert "bad: bad_t1.nii.gz: mixes naming conventions" in err
    assert snapshot(tmp_path / "in") == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{CASE}_flair.nii.gz"]
    output = nib.load(tmp_path / "out" / f"{CASE}_flair.nii.gz")
    np.testing.assert_array_equal(output.affine, nib.load(case_in / f"{CASE}_t1ce.nii.gz").affine)

    result = ev.evaluate(brats18_data, tmp_path / "out", baselines=["copy"], cases=[CASE], progress=False,
                         log=lambda _m: None)
    assert not result.errors
    rows = {(r["source"], r["modality"]): r for r in result.rows}
    assert set(rows) == {("prediction", "t2f"), ("baseline_copy", "t2f")}  # baselines for the predicted only
    stored = np.asarray(nib.load(brats18_data / CASE / f"{CASE}_seg.nii.gz").dataobj)
    assert 4 in stored and 3 not in stored  # the file keeps the 2018 labels ...
    for row in rows.values():  # ... and its enhancing tumour is read as the 2023 ET region
        assert row["status"] == "ok" and np.isfinite(row["ssim_brain_ET"]) and np.isfinite(row["ssim_tumour"])


def test_evaluate_reads_2018_labels_of_given_segmentations(brats18_data, tmp_path):
    stored = np.asarray(nib.load(brats18_data / CASE / f"{CASE}_seg.nii.gz").dataobj)
    ref = tmp_path / "ref" / CASE
    ref.mkdir(parents=True)
    (ref / f"{CASE}_seg.nii.gz").symlink_to(brats18_data / CASE / f"{CASE}_seg.nii.gz")
    segs = tmp_path / "segs"
    segs.mkdir()
    (segs / f"{CASE}_seg.nii.gz").symlink_to(brats18_data / CASE / f"{CASE}_seg.nii.gz")  # 2018 labels
    result = ev.evaluate(tmp_path / "ref", segmentation_dir=segs, progress=False, log=lambda _m: None)
    row = next(r for r in result.rows if r["source"] == ev.SEGMENTATION)
    assert row["dice_ET"] == 1.0 and row["dice_TC"] == 1.0 and row["dice_WT"] == 1.0
    (segs / f"{CASE}_seg.nii.gz").unlink()  # the same labels named as a 2023 file: label 4 is no region
    nib.save(nib.Nifti1Image(stored, AFFINE), segs / f"{CASE}-seg.nii.gz")
    result = ev.evaluate(tmp_path / "ref", segmentation_dir=segs, progress=False, log=lambda _m: None)
    row = next(r for r in result.rows if r["source"] == ev.SEGMENTATION)
    assert row["dice_ET"] == 0.0 and row["dice_WT"] < 1.0


def test_training_cases_follow_the_fixed_split(brats18_data):
    train_names, val_names = read_split(SPLIT)
    assert len(train_names) == 16 and sorted(val_names) == ["Brats18_2013_20_1", "Brats18_CBICA_AME_1",
                                                            "Brats18_TCIA02_370_1", "Brats18_TCIA10_639_1"]
    cfg = load_config(REPO / "train" / "configs" / "brasyn-real.yaml",
                      [f"data.roots=[{brats18_data}]", f"data.split={SPLIT}"])
    with pytest.warns(UserWarning):  # the README beside the cases is no case
        train, val = training_cases(cfg, BRASYN)
    assert sorted(c.name for c in train) == sorted(train_names)
    assert sorted(c.name for c in val) == sorted(val_names)
    assert all(c.naming is BRATS_2018 and c.seg is not None for c in train + val)
    volumes, seg = load_case(next(c for c in val if c.name == CASE), BRASYN.modalities)
    assert set(volumes) == set(BRASYN.modalities) and set(np.unique(seg)) <= {0, 1, 2, 3} and (seg == 3).any()


def test_split_file_errors(tmp_path):
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps({"train": ["a", "b"], "validation": ["b"]}))
    with pytest.raises(ValueError, match="b is both a training and a validation case"):
        read_split(bad)
    with pytest.raises(ValueError, match="cannot read split file"):
        read_split(tmp_path / "none.json")


def test_scale_norm_is_per_case_and_writes_a_fixed_scale():
    volume = synthetic_volumes((20, 18, 16), seed=3, modalities=("x",))["x"]
    norm = BRASYN_CASE_NORMALIZATION["t2f"]
    a, b = normalize(volume, norm), normalize(volume * 137.0, norm)
    np.testing.assert_allclose(a, b, atol=1e-5)  # a site's raw units do not matter
    assert a.min() == -1.0 and a.max() == 1.0 and (a[volume == 0] == -1.0).all()
    out = denormalize(np.array([-3.0, -1.0, 0.0, 1.0, 5.0], dtype=np.float32), norm)
    np.testing.assert_allclose(out, [0, 0, norm.output_high / 2, norm.output_high, norm.output_high])
    assert norm_from_json(json.loads(json.dumps(norm_to_json(norm)))) == norm
    assert norm_to_json(ScaleNorm())["kind"] == "scale"


def test_sanity_counts():
    reference = np.zeros((6, 6, 6), np.float32)
    reference[1:5, 1:5, 1:5] = 100.0
    reference[2, 2, 2] = 300.0  # brightest = 3 x the 99.5th percentile (about 100)
    inputs = {m: reference for m in ("t1c", "t1n", "t2w")}
    prediction = reference / 10
    prediction[1, 1, 1] = 0.0  # a brain voxel set to 0
    prediction[3, 3, 3] = 1000.0  # far above the real range relative to the prediction's own scale
    counts = sanity_counts(prediction, inputs, reference)
    assert counts == {"brain_zeros": 1, "far_above": 1}
