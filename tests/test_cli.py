"""The command line end to end: real BraTS case with each modality missing, layouts, shards, skips, QC, errors."""
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from infer import cli
from infer.cli import main
from infer.engine.intensity import background_vote, foreground
from infer.engine.qc import qc_centre
from conventions.tasks import BRASYN

from helpers import AFFINE, SMALL_SHAPE, run_cli, save_tiny_checkpoint, snapshot, write_case

CASE = "BraTS-GLI-00000-000"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def full_size_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "full", image_size=240)


@pytest.mark.parametrize("missing", BRASYN.modalities)
def test_real_case_with_each_modality_missing(brats_data, full_size_checkpoint, tmp_path, missing):
    source = brats_data / CASE
    case_dir = tmp_path / "in" / CASE
    case_dir.mkdir(parents=True)
    present = [m for m in BRASYN.modalities if m != missing]
    for modality in present:
        (case_dir / f"{CASE}-{modality}.nii.gz").symlink_to(source / f"{CASE}-{modality}.nii.gz")
    before = snapshot(tmp_path / "in")

    assert run_cli(tmp_path / "in", tmp_path / "out", full_size_checkpoint, "--batch-size", "32") == 0

    assert snapshot(tmp_path / "in") == before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{CASE}-{missing}.nii.gz"]
    inputs = {m: nib.load(case_dir / f"{CASE}-{m}.nii.gz") for m in present}
    reference = inputs[present[0]]
    output = nib.load(tmp_path / "out" / f"{CASE}-{missing}.nii.gz")
    assert output.shape == reference.shape == (240, 240, 155)
    np.testing.assert_array_equal(output.affine, reference.affine)
    assert nib.aff2axcodes(output.affine) == ("L", "P", "S")
    assert output.get_data_dtype() == np.float32
    data = output.get_fdata(dtype=np.float32)
    assert np.isfinite(data).all() and (data >= 0).all()
    background = background_vote([foreground(image.get_fdata(dtype=np.float32)) for image in inputs.values()])
    assert background.any() and (data[background] == 0).all()


def test_flat_layout_and_header_of_the_first_available_input(small_checkpoint, tmp_path):
    write_case(tmp_path / "in", "a", ("t1n", "t2f", "t2w"), flat=True)
    write_case(tmp_path / "in", "b", ("t1c", "t1n", "t2f"), flat=True, seed=1)
    assert run_cli(tmp_path / "in", tmp_path / "out", small_checkpoint) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a-t1c.nii.gz", "b-t2w.nii.gz"]
    for name, first in (("a-t1c", b"t1n"), ("b-t2w", b"t1c")):
        output = nib.load(tmp_path / "out" / f"{name}.nii.gz")
        assert output.header["descrip"].item() == first
        assert output.get_data_dtype() == np.float32 and output.shape == SMALL_SHAPE
        np.testing.assert_array_equal(output.affine, AFFINE)


def test_shards_split_the_sorted_cases(small_checkpoint, tmp_path):
    for i, name in enumerate(["e", "a", "d", "b", "c"]):
        write_case(tmp_path / "in", name, seed=i)
    for shard in ("0/2", "1/2"):
        assert run_cli(tmp_path / "in", tmp_path / shard[0], small_checkpoint, "--shard", shard) == 0
    assert sorted(p.name for p in (tmp_path / "0").iterdir()) == ["a-t2f.nii.gz", "c-t2f.nii.gz", "e-t2f.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "1").iterdir()) == ["b-t2f.nii.gz", "d-t2f.nii.gz"]


def test_existing_output_is_skipped_only_when_valid(small_checkpoint, tmp_path, capsys):
    write_case(tmp_path / "in", "a")
    output = tmp_path / "out" / "a-t2f.nii.gz"
    assert run_cli(tmp_path / "in", tmp_path / "out", small_checkpoint) == 0
    finished = output.read_bytes()
    capsys.readouterr()
    assert run_cli(tmp_path / "in", tmp_path / "out", small_checkpoint) == 0
    assert output.read_bytes() == finished
    err = capsys.readouterr().err
    assert "note: a: output exists, skipped (pass --overwrite to replace it)" in err
    assert "1 case(s): 0 written, 1 skipped (output exists), 0 failed" in err
    nib.save(nib.Nifti1Image(np.ones((14, 12, 8), np.float32), AFFINE), tmp_path / "other-shape.nii.gz")
    other_shape = (tmp_path / "other-shape.nii.gz").read_bytes()
    for bad, problem in [(b"", "unreadable (ImageFileError)"), (b"previous", "unreadable (ImageFileError)"),
                         (finished[:len(finished) // 2], "unreadable (EOFError)"),
                         (other_shape, "shape (14, 12, 8), expected that of the inputs, (14, 12, 9)")]:
        output.write_bytes(bad)
        assert run_cli(tmp_path / "in", tmp_path / "out", small_checkpoint) == 0
        err = capsys.readouterr().err
        assert f"note: a: a-t2f.nii.gz: existing output is not valid ({problem}); computing it again\n" in err
        assert "1 case(s): 1 written, 0 skipped" in err
        assert output.read_bytes() == finished
    assert run_cli(tmp_path / "in", tmp_path / "out", small_checkpoint, "--overwrite") == 0
    assert "1 written" in capsys.readouterr().err
    assert sorted(p.name for p in output.parent.iterdir()) == ["a-t2f.nii.gz"]  # no temporary file left


def test_unwritable_output_folder_is_a_setup_error_before_any_case(small_checkpoint, tmp_path):
    write_case(tmp_path / "in", "a")
    output = tmp_path / "out"
    output.mkdir()
    output.chmod(0o555)
    command = [sys.executable, "-m", "infer", "--input", str(tmp_path / "in"), "--output", str(output),
               "--weights", str(small_checkpoint), "--device", "cpu"]
    if os.geteuid() == 0:  # root writes anywhere: run as nobody, able to read everything but not to write
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
                   "--ambient-caps=+dac_read_search", *command]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [f"error: output folder {output} is not writable (Permission denied)"]
    assert list(output.iterdir()) == []


def test_files_an_interrupted_run_left_are_removed_with_a_note(small_checkpoint, tmp_path, capsys):
    write_case(tmp_path / "in", "a")
    left = [tmp_path / "out" / ".a-t2f.nii.gz.partial-0123abcd", tmp_path / "out" / f".tmp-{'e' * 32}-a-t2f.nii.gz",
            tmp_path / "out" / "qc" / ".a.png.partial-4567cdef"]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x1f\x8b half an output")
    assert run_cli(tmp_path / "in", tmp_path / "out", small_checkpoint) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "unfinished" in line]
    assert notes == [f"note: removed 3 unfinished file(s) that an interrupted run left in {tmp_path / 'out'}: "
                     f"{left[0].name}, {left[1].name}, {left[2].name}"]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["a-t2f.nii.gz", "qc"]


def test_a_case_name_of_225_characters(small_checkpoint, tmp_path):
    case = "c" * 225
    write_case(tmp_path / "in", case)
    assert run_cli(tmp_path / "in", tmp_path / "out", small_checkpoint) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == [f"{case}-t2f.nii.gz"]


def test_control_characters_in_names_stay_escaped_on_one_line(small_checkpoint, tmp_path, capsys):
    case = "bad\nnote: x: output exists, skipped\x1b[2J"
    write_case(tmp_path / "in", case, ("t1c", "t1n"))
    assert run_cli(tmp_path / "in", tmp_path / "out", small_checkpoint) == 1
    err = capsys.readouterr().err.splitlines()
    escaped = "bad\\nnote: x: output exists, skipped\\x1b[2J"
    assert [line.split(": ", 1)[0] for line in err if escaped in line] == ["error", "failed"]
    assert not [line for line in err if line.startswith("note: x") or "\x1b" in line]


def test_qc_picture(small_checkpoint, tmp_path):
    write_case(tmp_path / "in", "a")
    assert run_cli(tmp_path / "in", tmp_path / "out", small_checkpoint, "--qc", "--views", "axial,coronal") == 0
    assert (tmp_path / "out" / "qc" / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_qc_centre_prefers_the_tumour():
    brain = np.zeros((10, 8, 6), dtype=bool)
    brain[2:6, 2:4, 1:3] = True
    tumour = np.zeros_like(brain)
    tumour[7, 6, 5] = True
    assert qc_centre(brain, tumour) == (7, 6, 5)
    assert qc_centre(brain) == qc_centre(brain, np.zeros_like(brain)) == (4, 2, 2)
    assert qc_centre(np.zeros_like(brain)) == (5, 4, 3)


def test_setup_errors_are_one_line(small_checkpoint, tmp_path, monkeypatch, capsys):
    write_case(tmp_path / "in", "a")
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(cli, "WEIGHTS_ROOT", tmp_path / "weights")
    cases = [
        (["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")], "pass --weights CKPT"),
        (["--input", str(tmp_path / "in"), "--output", str(tmp_path / "in" / "out"), "--weights",
          str(small_checkpoint)], "inside the input folder"),
        (["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"), "--weights", str(small_checkpoint)],
         "does not exist"),
        (["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--weights", str(tmp_path)],
         "not a checkpoint folder"),
        (["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "out"), "--weights", str(small_checkpoint)],
         "no cases in"),
        (["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--weights", str(small_checkpoint),
          "--shard", "2/2"], "0 <= I < N"),
        (["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--weights", str(small_checkpoint),
          "--views", "axial,oblique"], "unknown view"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (tmp_path / "in" / "out").exists() and not (tmp_path / "out").exists()


def test_compression_level_reaches_the_outputs(small_checkpoint, tmp_path, capsys):
    write_case(tmp_path / "in", "a")
    sizes = []
    for level in ("0", "9"):
        assert run_cli(tmp_path / "in", tmp_path / level, small_checkpoint, "--compression-level", level) == 0
        output = tmp_path / level / "a-t2f.nii.gz"
        assert nib.load(output).shape == SMALL_SHAPE
        sizes.append(output.stat().st_size)
    assert sizes[0] > 4 * np.prod(SMALL_SHAPE) > sizes[1]  # stored float32 voxels at 0, compressed at 9
    with pytest.raises(SystemExit):
        run_cli(tmp_path / "in", tmp_path / "x", small_checkpoint, "--compression-level", "10")
    assert "expected a gzip level from 0 (none) to 9 (smallest)" in capsys.readouterr().err


@pytest.mark.parametrize("option, native, ran", [("auto", True, "bf16"), ("auto", False, "fp32"),
                                                 ("fp32", True, "fp32"), ("bf16", False, "bf16")])
def test_the_summary_says_which_precision_ran(small_checkpoint, tmp_path, monkeypatch, capsys, option, native, ran):
    monkeypatch.setattr("infer.engine.precision.cpu_has_native_bf16", lambda: native)
    write_case(tmp_path / "in", "a")
    assert run_cli(tmp_path / "in", tmp_path / "out", small_checkpoint, "--precision", option) == 0
    err = capsys.readouterr().err
    assert "1 written" in err and f"cases/s, precision {ran})\n" in err


def test_cuda_requested_without_cuda(small_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: False)
    write_case(tmp_path / "in", "a")
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--weights",
                 str(small_checkpoint), "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_help_through_python_dash_m():
    result = subprocess.run([sys.executable, "-m", "infer", "--help"], capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    for option in ("--task", "--input IN", "--output OUT", "--weights CKPT", "--views", "--device", "--batch-size N",
                   "--compile", "--precision {auto,fp32,bf16}", "--compression-level L", "--qc", "--shard I/N",
                   "--overwrite"):
        assert option in result.stdout
