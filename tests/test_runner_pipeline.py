"""The runner's stages and their overlap: order and content as a sequential run, per-item failures, bounded
read-ahead and write queue, and the outputs' gzip level."""
import threading
import time

import nibabel as nib
import numpy as np
import pytest

from infer.engine.cases import CaseError, discover_cases
from infer.engine.slices import EngineSettings, VolumePredictor
from infer.engine.runner import STAGES, overlapped, plan_case, read_inputs, run, synthesise, write_outputs
from conventions.tasks import BRASYN
from infer.engine.writer import write_nifti

from helpers import AFFINE, SMALL_SHAPE, CopyModel, synthetic_volumes, write_case


def copy_predictor():
    settings = EngineSettings(modalities=BRASYN.modalities, normalization=BRASYN.normalization, views=("axial",),
                              image_size=16)
    return VolumePredictor(CopyModel(source=0), settings)


def fail_on(bad, fn):
    def stage(x):
        if x == bad:
            raise ValueError(f"{fn.__name__} failed on {x}")
        return fn(x)
    return stage


def load(x):
    return x * 10


def compute(x):
    return x + 1


def store(x):
    return -x


@pytest.mark.parametrize("prefetch, pending_writes", [(1, 1), (2, 1), (1, 3), (0, 2), (2, 0)])
def test_overlapped_equals_the_sequential_path_and_failures_stay_per_item(prefetch, pending_writes):
    items = list(range(7))
    stages = (fail_on(2, load), fail_on(30, compute), fail_on(51, store))  # items 2, 3 and 5 fail in turn
    sequential = list(overlapped(items, *stages, prefetch=0, pending_writes=0))
    assert [item for item, _ in sequential] == items
    assert [r if not isinstance(r, Exception) else str(r) for _, r in sequential] == [
        -1, -11, "load failed on 2", "compute failed on 30", -41, "store failed on 51", -61]
    result = list(overlapped(items, *stages, prefetch=prefetch, pending_writes=pending_writes))
    assert [(item, str(r)) for item, r in result] == [(item, str(r)) for item, r in sequential]


def test_sequential_path_runs_each_item_through_every_stage_in_turn():
    log = []
    list(overlapped([1, 2], lambda x: log.append(("load", x)) or x, lambda x: log.append(("compute", x)) or x,
                    lambda x: log.append(("store", x)) or x, prefetch=0, pending_writes=0))
    assert log == [("load", 1), ("compute", 1), ("store", 1), ("load", 2), ("compute", 2), ("store", 2)]


class Counter:
    """Items that a stage has finished and the next has not yet taken, with the largest count seen."""

    def __init__(self):
        self.lock = threading.Lock()
        self.held = self.most = 0

    def add(self, n):
        with self.lock:
            self.held += n
            self.most = max(self.most, self.held)


@pytest.mark.parametrize("prefetch", [1, 2])
def test_the_reader_holds_at_most_prefetch_cases(prefetch):
    in_memory = Counter()  # read and not yet through `compute`: the one in the model plus those read ahead
    loads = []

    def load(x):
        in_memory.add(1)
        loads.append(x)
        return x

    def slow_compute(x):
        time.sleep(0.02)  # the reader would run far ahead here if it were not bounded
        in_memory.add(-1)
        return x

    assert [r for _, r in overlapped(range(12), load, slow_compute, store, prefetch=prefetch)] == [
        -x for x in range(12)]
    assert in_memory.most == 1 + prefetch and loads == list(range(12))


@pytest.mark.parametrize("pending_writes", [1, 2])
def test_the_writer_queue_holds_at_most_pending_writes_results(pending_writes):
    waiting = Counter()
    most_while_computing = []

    def compute(x):
        most_while_computing.append(waiting.held)
        waiting.add(1)
        return x

    def slow_store(x):
        time.sleep(0.02)
        waiting.add(-1)
        return x

    assert [r for _, r in overlapped(range(8), load, compute, slow_store, pending_writes=pending_writes)] == [
        10 * x for x in range(8)]
    assert max(most_while_computing) == pending_writes


def make_cases(root):
    write_case(root, "a")
    write_case(root, "b", seed=1)
    write_case(root, "c", ("t1c", "t1n"), seed=2)  # only two inputs: fails in the middle
    write_case(root, "d", ("t1n", "t2f", "t2w"), seed=3)
    (root / "e").mkdir()
    (root / "e" / "e-t2w.nii.gz").write_bytes(b"truncated")  # unreadable in the reader thread
    write_case(root, "e", ("t1c", "t1n"), seed=4)
    write_case(root, "f", seed=5)


def test_overlapped_run_writes_what_a_sequential_run_writes(tmp_path, capsys):
    make_cases(tmp_path / "in")
    predictor = copy_predictor()
    sequential = run(BRASYN, tmp_path / "in", tmp_path / "seq", predictor, progress=False, prefetch=0,
                     pending_writes=0)
    seq_err = capsys.readouterr().err
    overlap = run(BRASYN, tmp_path / "in", tmp_path / "ovl", predictor, progress=False, prefetch=2, pending_writes=2)
    assert capsys.readouterr().err == seq_err
    assert (overlap.written, overlap.skipped, overlap.failed) == (sequential.written, sequential.skipped,
                                                                  sequential.failed)
    assert len(overlap.failed) == 2
    assert overlap.failed[0] == "c: found 2 input modalities (t1c, t1n), task brasyn needs 3"
    assert overlap.failed[1].startswith("e: e-t2w.nii.gz: unreadable (")
    names = sorted(p.name for p in (tmp_path / "seq").iterdir())
    assert names == ["a-t2f.nii.gz", "b-t2f.nii.gz", "d-t1c.nii.gz", "f-t2f.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "ovl").iterdir()) == names
    for name in names:  # gzip headers carry no time or name, so equal contents give equal bytes
        assert (tmp_path / "ovl" / name).read_bytes() == (tmp_path / "seq" / name).read_bytes()
    assert len(overlap.timings) == 4 and all(set(t) == set(STAGES) for t in overlap.timings)


def test_stage_functions(tmp_path):
    write_case(tmp_path / "in", "a")
    case = discover_cases(tmp_path / "in", BRASYN)[0]
    job = plan_case(case, BRASYN, tmp_path / "out")
    assert job.outputs == {"t2f": tmp_path / "out" / "a-t2f.nii.gz"} and job.data is None
    read_inputs(job, BRASYN)
    assert sorted(job.data.volumes) == ["t1c", "t1n", "t2w"] and set(job.timings) == {"read", "preprocess"}
    assert all(v.dtype == np.float32 and v.shape == SMALL_SHAPE for v in job.data.volumes.values())
    reference = job.data.reference
    synthesise(job, copy_predictor())
    assert job.synthesis["t2f"].shape == SMALL_SHAPE and job.synthesis["t2f"].dtype == np.float32
    assert job.data.volumes == {} and job.data.reference is reference  # a case waiting to be written is light
    (tmp_path / "out").mkdir()
    write_outputs(job, BRASYN, tmp_path / "out")
    np.testing.assert_array_equal(nib.load(job.outputs["t2f"]).get_fdata(dtype=np.float32), job.synthesis["t2f"])
    assert set(job.timings) == set(STAGES) and all(t > 0 for t in job.timings.values())
    assert plan_case(case, BRASYN, tmp_path / "out") is None  # written: skipped next time
    assert plan_case(case, BRASYN, tmp_path / "out", overwrite=True).outputs == job.outputs
    (tmp_path / "in" / "a" / "a-t1n.nii.gz").write_bytes(b"")
    with pytest.raises(CaseError, match="^a: a-t1n.nii.gz: unreadable"):
        read_inputs(plan_case(case, BRASYN, tmp_path / "other"), BRASYN)


def test_compression_level_is_honoured(tmp_path):
    volume = synthetic_volumes(SMALL_SHAPE)["t1c"] / 7
    reference = nib.Nifti1Image(np.zeros(SMALL_SHAPE, dtype=np.int16), AFFINE)
    sizes = {}
    for level in (0, 9):
        path = write_nifti(tmp_path / f"level{level}.nii.gz", volume, reference, compression_level=level)
        image = nib.load(path)
        np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), volume)
        np.testing.assert_array_equal(image.affine, AFFINE)
        sizes[level] = path.stat().st_size
    assert sizes[9] < sizes[0] - volume.nbytes // 4
    with pytest.raises(ValueError, match="0 to 9"):
        write_nifti(tmp_path / "bad.nii.gz", volume, reference, compression_level=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["level0.nii.gz", "level9.nii.gz"]


class NonFinitePredictor:
    """Synthesises a copy of the first input with one NaN and one infinite voxel."""

    def predict(self, volumes, target, timings=None):
        out = next(iter(volumes.values())).copy()
        out[0, 0, 0], out[1, 0, 0] = np.nan, np.inf
        return out


def test_a_non_finite_synthesis_is_refused(tmp_path):
    write_case(tmp_path / "in", "a")
    summary = run(BRASYN, tmp_path / "in", tmp_path / "out", NonFinitePredictor(), progress=False)
    assert summary.failed == ["a: a-t2f.nii.gz: the synthesis has 2 NaN or infinite voxels; not written"]
    assert list((tmp_path / "out").iterdir()) == []
