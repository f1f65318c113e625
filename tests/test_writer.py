"""Atomic writes: temporary names that no reader takes for an output and that fit any file system, clean-up of
those an interrupted run left behind, writes abandoned at a stop signal, and standard, deterministic gzip through
every gzip implementation installed."""
import os
import signal

import nibabel as nib
import numpy as np
import pytest

from infer.engine import compression
from infer.engine.compression import BACKENDS, isal_level
from infer.engine.interrupt import Interrupted, stop_on_signals
from infer.engine.writer import NAME_MAX, PARTIAL_NAME, atomic_path, partial_path, remove_partials, write_nifti

from helpers import AFFINE, SMALL_SHAPE, synthetic_volumes


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("level", [0, 1, 5, 9])
def test_outputs_round_trip_through_every_gzip_backend(tmp_path, monkeypatch, backend, level):
    monkeypatch.setattr(compression, "BACKENDS", (backend,))
    volume = synthetic_volumes((40, 36, 30))["t1c"] / 7
    reference = nib.Nifti1Image(np.zeros(volume.shape, np.int16), AFFINE)
    first = write_nifti(tmp_path / "a-t2f.nii.gz", volume, reference, compression_level=level).read_bytes()
    assert write_nifti(tmp_path / "b-t2f.nii.gz", volume, reference, compression_level=level).read_bytes() == first
    assert first[:4] == b"\x1f\x8b\x08\x00" and first[4:8] == bytes(4)  # gzip, no file name, mtime 0
    assert (len(first) > volume.nbytes) == (level == 0)  # level 0 stores, the others compress
    image = nib.load(tmp_path / "a-t2f.nii.gz")
    np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), volume)
    np.testing.assert_array_equal(image.affine, AFFINE)


def test_isal_is_preferred_when_installed_and_levels_map_onto_its_four():
    pytest.importorskip("isal")
    assert BACKENDS == ("isal", "zlib")
    assert [isal_level(level) for level in range(1, 10)] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    with pytest.raises(ValueError, match="gzip backend 'zstd' is not installed"):
        compression.gzip_writer(None, 1, "zstd")
