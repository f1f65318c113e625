"""Atomic writes: temporary names that no reader takes for an output and that fit any file system, clean-up of
those an interrupted run left behind, and writes abandoned at a stop signal."""
import os
import signal

import nibabel as nib
import numpy as np
import pytest

from infer.engine.interrupt import Interrupted, stop_on_signals
from infer.engine.writer import NAME_MAX, PARTIAL_NAME, atomic_path, partial_path, remove_partials, write_nifti

from helpers import AFFINE, SMALL_SHAPE


@pytest.mark.parametrize("name", ["a-t2f.nii.gz", "c" * 225 + "-t2f.nii.gz", "é" * 120 + "-t2f.nii.gz"])
def test_temporary_names_are_hidden_bounded_and_never_outputs(tmp_path, name):
    tmp = partial_path(tmp_path / name)
    assert tmp.parent == tmp_path and tmp.name.startswith(".") and PARTIAL_NAME.fullmatch(tmp.name)
    assert not tmp.name.endswith((".nii.gz", ".nii", ".png")) and len(os.fsencode(tmp.name)) <= NAME_MAX
    assert partial_path(tmp_path / name) != tmp  # a fresh name each time
    image = nib.Nifti1Image(np.zeros(SMALL_SHAPE, np.int16), AFFINE)
    write_nifti(tmp_path / name, np.ones(SMALL_SHAPE, np.float32), image)  # the file system takes the name
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_remove_partials_spares_outputs_and_live_writers(tmp_path):
    stale = [tmp_path / ".a-t2f.nii.gz.partial-0123abcd", tmp_path / f".tmp-{'f' * 32}-b-t2f.nii.gz"]
    kept = [tmp_path / "a-t2f.nii.gz", tmp_path / ".hidden", tmp_path / "x.partial-0123abcd"]
    for p in stale + kept:
        p.write_bytes(b"")
    with atomic_path(tmp_path / "c-t2f.nii.gz") as live:  # another run writing into the same folder
        assert remove_partials(tmp_path) == sorted(stale)
        assert live.exists()
        live.write_bytes(b"done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [*kept, tmp_path / "c-t2f.nii.gz"])
    assert remove_partials(tmp_path / "nowhere") == []


def test_a_stop_signal_abandons_writes_and_leaves_no_file(tmp_path):
    image = nib.Nifti1Image(np.zeros(SMALL_SHAPE, np.int16), AFFINE)
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        with pytest.raises(Interrupted) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()  # not reached: the handler raises first
        assert stopped.value.signum == signal.SIGTERM and str(stopped.value) == "stopped by SIGTERM"
        with pytest.raises(Interrupted):  # e.g. in the writer thread, which the signal does not reach
            write_nifti(tmp_path / "a-t2f.nii.gz", np.ones(SMALL_SHAPE, np.float32), image)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before
    with stop_on_signals():  # a new run starts afresh
        write_nifti(tmp_path / "a-t2f.nii.gz", np.ones(SMALL_SHAPE, np.float32), image)
    assert [p.name for p in tmp_path.iterdir()] == ["a-t2f.nii.gz"]
