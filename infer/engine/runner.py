"""Run a predictor over every case of an input folder: shards, skips, per-case errors, progress and a summary.

A bad case costs one line on stderr and is skipped; the others are processed. Outputs go to OUT only
(never into IN), named by the task's rule, each written atomically. A predictor that also segments
(`predict_with_segmentation`, e.g. TISS-Net) can write each case's mask to a folder of its own, outside IN and
OUT (`segmentation_dir`: `<case>-seg.nii.gz`, uint8, the synthesis's header), so that OUT holds only the
synthesised modalities, as a BraTS container's /output must.

Cases flow through three stages: `read_inputs` in a reader thread that reads at most `prefetch` cases ahead,
`synthesise` in the calling thread, and `write_outputs` in a writer thread that holds at most `pending_writes`
finished cases (`overlapped`), so reading and writing overlap the model and memory stays flat however many
cases there are. Outcomes are reported in case order, as a sequential run would report them.
"""
from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import TypeVar

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from infer.engine.cases import (CaseError, CaseFiles, CaseVolumes, case_naming, check_case, decode_case, discover_cases,
                         validate_case)
from infer.engine.slices import Timings, VolumePredictor, timed
from infer.engine.qc import save_qc
from conventions.naming import BRATS_2023, SEGMENTATION
from conventions.tasks import TaskSpec
from infer.engine.writer import DEFAULT_COMPRESSION_LEVEL, partial_path, remove_partials, write_nifti

QC_FOLDER = "qc"

STAGES: dict[str, str] = {
    "read": "read + decode",
    "preprocess": "validate + preprocess",
    "forward": "model forward",
    "postprocess": "stack/crop/background/denormalise",
    "write": "encode + write",
}
"""The timed stages of a case (keys of `CaseJob.timings`) and what each covers."""

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")
Computed = TypeVar("Computed")
Stored = TypeVar("Stored")


@dataclass
class RunSummary:
    """What a run did: cases written, skipped (outputs already there), failed (one line each), wall time, the
    stage seconds of each written case in case order, and the precision the model ran in (when known)."""

    cases: int = 0
    written: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: list[Timings] = field(default_factory=list)
    precision: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        rate = self.cases / self.seconds if self.seconds > 0 else 0.0
        precision = f", precision {self.precision}" if self.precision else ""
        return (f"{self.cases} case(s): {self.written} written, {self.skipped} skipped (output exists), "
                f"{len(self.failed)} failed in {self.seconds:.1f} s ({rate:.2f} cases/s{precision})")


def select_shard(cases: Sequence[CaseFiles], index: int, count: int) -> list[CaseFiles]:
    """Shard `index` of `count` of name-sorted `cases` (as `discover_cases` gives them): case i goes to shard
    i % count."""
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= I < N")
    return list(cases[index::count])


def check_folders(input_dir: Path, output_dir: Path) -> None:
    """ValueError unless `input_dir` is a folder and `output_dir` lies outside it."""
    if not input_dir.is_dir():
        raise ValueError(f"input folder {input_dir} does not exist")
    source, target = input_dir.resolve(), output_dir.resolve()
    if target == source or source in target.parents:
        raise ValueError(f"output folder {output_dir} is inside the input folder {input_dir}; "
                         "inputs are never written to")


def check_segmentation_folder(segmentation_dir: Path, input_dir: Path, output_dir: Path, predictor: object) -> None:
    """ValueError unless `predictor` segments and `segmentation_dir` lies outside both `input_dir` and
    `output_dir` (which holds the synthesised modalities only)."""
    if not hasattr(predictor, "predict_with_segmentation"):
        raise ValueError("--segmentation-output: this checkpoint's family does not segment")
    target = segmentation_dir.resolve()
    for folder, what in ((input_dir, "input"), (output_dir, "output")):
        if target == folder.resolve() or folder.resolve() in target.parents:
            raise ValueError(f"segmentation folder {segmentation_dir} is inside the {what} folder {folder}; "
                             "it must lie outside both")


def prepare_output(output_dir: Path) -> list[Path]:
    """Create `output_dir`, check that files can be created in it (ValueError otherwise, before any case is
    computed) and remove the temporary files that an interrupted run left there; return those removed."""
    probe = partial_path(output_dir / "write-check")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.touch(exist_ok=False)
        probe.unlink(missing_ok=True)  # a concurrent run's clean-up may have taken it
    except OSError as err:
        raise ValueError(f"output folder {output_dir} is not writable ({err.strerror or err})") from None
    return remove_partials(output_dir) + remove_partials(output_dir / QC_FOLDER)


def printable(text: str) -> str:
    """`text` with control and other non-printable characters escaped (a newline as \\n), so that a message
    about any case or file name stays on one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def describe_failure(case: str, err: Exception) -> str:
    """One line for a failed case: a CaseError as is, a ValueError by its message, anything else with its type."""
    if isinstance(err, CaseError):
        return printable(str(err))
    first_line = (str(err).splitlines() or [""])[0]
    kind = "" if isinstance(err, ValueError) else f"unexpected {type(err).__name__}: "
    return printable(f"{case}: {kind}{first_line}")


def _say(message: str) -> None:
    tqdm.write(printable(message), file=sys.stderr)


@dataclass
class CaseJob:
    """One case on its way through the stages: the outputs it still needs (target -> path), its inputs once
    read, its synthesis once computed, and the seconds each stage took."""

    case: CaseFiles
    outputs: dict[str, Path]
    data: CaseVolumes | None = None
    synthesis: dict[str, np.ndarray] = field(default_factory=dict)
    timings: Timings = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    segmentation: Path | None = None
    mask: np.ndarray | None = None


def output_problem(path: Path, shape: tuple[int, ...] | None) -> str | None:
    """None when `path` is a finished output: a NIfTI of `shape` whose data decode; else what is wrong with it."""
    try:
        image = nib.load(path)
        np.asarray(image.dataobj)
    except Exception as err:  # nibabel, gzip and zlib raise many types for garbage or truncated files
        return f"unreadable ({type(err).__name__})"
    return None if image.shape == shape else f"shape {image.shape}, expected that of the inputs, {shape}"


def input_shape(case: CaseFiles, task: TaskSpec) -> tuple[int, ...] | None:
    """The shape of `case`'s first input in the task's modality order (that of its outputs), None if unreadable."""
    first = next(case.files[m] for m in task.modalities if m in case.files)
    try:
        return nib.load(first).shape
    except Exception:  # reported when the case is read
        return None


def plan_case(case: CaseFiles, task: TaskSpec, output_dir: Path, overwrite: bool = False,
              segmentation_dir: Path | None = None) -> CaseJob | None:
    """The job of `case` (CaseError when its files do not fit the task); None when every output it would
    write (with its mask in `segmentation_dir`, when given) exists already as a valid NIfTI of the inputs'
    shape (and not `overwrite`). An existing output that is not valid is computed again, with a note in the
    job; a missing mask recomputes the case's every output (they come from one pass)."""
    targets = check_case(case, task)
    naming = task.output_naming or case_naming(case, task)
    outputs = {t: output_dir / naming.file_name(case.name, t) for t in targets}
    segmentation = None if segmentation_dir is None else segmentation_dir / BRATS_2023.file_name(case.name,
                                                                                                  SEGMENTATION)
    if overwrite:
        return CaseJob(case, outputs, segmentation=segmentation)
    wanted = {**outputs, SEGMENTATION: segmentation} if segmentation is not None else outputs
    existing = [p for p in wanted.values() if p.exists()]
    shape = input_shape(case, task) if existing else None
    problems = {p: output_problem(p, shape) for p in existing}
    pending = {t: p for t, p in wanted.items() if p not in problems or problems[p] is not None}
    notes = [f"{case.name}: {p.name}: existing output is not valid ({problem}); computing it again"
             for p, problem in problems.items() if problem is not None]
    if SEGMENTATION in pending:
        return CaseJob(case, outputs, notes=notes, segmentation=segmentation)
    return CaseJob(case, pending, notes=notes) if pending else None


def read_inputs(job: CaseJob, task: TaskSpec) -> CaseJob:
    """Read, decode and validate the inputs of `job` into `job.data`."""
    with timed(job.timings, "read"):
        decoded = decode_case(job.case, task)
    with timed(job.timings, "preprocess"):
        job.data = validate_case(job.case, decoded)
    return job


def synthesise(job: CaseJob, predictor: VolumePredictor, keep_inputs: bool = False) -> CaseJob:
    """Predict every output of `job` from its inputs into `job.synthesis`, then let the input volumes go unless
    `keep_inputs` (for the QC picture), so that a case waiting to be written holds little memory."""
    for target in job.outputs:
        if job.segmentation is not None and job.mask is None:
            job.synthesis[target], job.mask = predictor.predict_with_segmentation(job.data.volumes, target,
                                                                                  job.timings)
        else:
            job.synthesis[target] = predictor.predict(job.data.volumes, target, job.timings)
    for target, volume in job.synthesis.items():
        check_synthesis(job.case.name, job.outputs[target], volume)
    if not keep_inputs:
        job.data = replace(job.data, volumes={})
    return job


def check_synthesis(case: str, path: Path, volume: np.ndarray) -> None:
    """CaseError when the synthesis for `path` has NaN or infinite voxels (it is then not written)."""
    bad = volume.size - np.count_nonzero(np.isfinite(volume))
    if bad:
        raise CaseError(case, f"the synthesis has {bad} NaN or infinite voxels; not written", path)


def write_outputs(job: CaseJob, task: TaskSpec, output_dir: Path, qc: bool = False,
                  compression_level: int = DEFAULT_COMPRESSION_LEVEL) -> CaseJob:
    """Write each synthesis of `job` atomically (and its QC picture when `qc`, from inputs kept by
    `synthesise`)."""
    with timed(job.timings, "write"):
        for target, path in job.outputs.items():
            write_nifti(path, job.synthesis[target], job.data.reference, task.output_dtype, compression_level)
        if job.mask is not None:
            write_nifti(job.segmentation, job.mask, job.data.reference, "uint8", compression_level)
        if qc:
            save_qc(output_dir / QC_FOLDER / f"{job.case.name}.png", job.data.volumes, job.synthesis)
    return job


@contextmanager
def _worker(enabled: bool) -> Iterator[ThreadPoolExecutor | None]:
    """One background thread, or None (work inline) when not `enabled`; queued work is dropped on exit."""
    if not enabled:
        yield None
        return
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _submit(pool: ThreadPoolExecutor | None, fn: Callable[..., object], *args: object) -> Future:
    """`fn(*args)` on `pool`, or run now when `pool` is None; its result or exception in a Future either way."""
    if pool is not None:
        return pool.submit(fn, *args)
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as err:
        future.set_exception(err)
    return future


def _failed(err: Exception) -> Future:
    """A finished Future holding `err`."""
    future: Future = Future()
    future.set_exception(err)
    return future


def _outcome(future: Future) -> object:
    """The result of a finished stage, or its Exception (anything else, such as KeyboardInterrupt, is raised)."""
    err = future.exception()
    if err is None:
        return future.result()
    if isinstance(err, Exception):
        return err
    raise err


def overlapped(items: Sequence[Item], load: Callable[[Item], Loaded], compute: Callable[[Loaded], Computed],
               store: Callable[[Computed], Stored], prefetch: int = 1,
               pending_writes: int = 1) -> Iterator[tuple[Item, Stored | Exception]]:
    """(item, store(compute(load(item))) or the Exception of the stage that failed), in item order.

    `compute` runs in the calling thread; `load` runs in a reader thread at most `prefetch` items ahead of it
    (loaded results not yet handed to `compute`), and `store` in a writer thread with at most `pending_writes`
    results waiting or being stored while `compute` runs. 0 runs that stage inline, in turn (sequentially).
    An item whose stage failed skips its later stages; the other items go on.
    """
    with _worker(prefetch > 0) as reader, _worker(pending_writes > 0) as writer:
        upcoming = iter(items)
        loads: deque[tuple[Item, Future]] = deque()
        stores: deque[tuple[Item, Future]] = deque()

        def read_ahead(count: int) -> None:
            for item in islice(upcoming, max(count, 0)):
                loads.append((item, _submit(reader, load, item)))

        read_ahead(1)
        while loads:
            item, loading = loads.popleft()
            loaded = _outcome(loading)
            read_ahead(prefetch - len(loads))
            if isinstance(loaded, Exception):
                stores.append((item, loading))
            else:
                try:
                    stores.append((item, _submit(writer, store, compute(loaded))))
                except Exception as err:
                    stores.append((item, _failed(err)))
            while len(stores) > pending_writes or (stores and stores[0][1].done()):
                done, storing = stores.popleft()
                yield done, _outcome(storing)
            read_ahead(1 - len(loads))
        for done, storing in stores:
            yield done, _outcome(storing)


def run(task: TaskSpec, input_dir: Path, output_dir: Path, predictor: VolumePredictor, *,
        shard: tuple[int, int] = (0, 1), overwrite: bool = False, qc: bool = False, progress: bool = True,
        compression_level: int = DEFAULT_COMPRESSION_LEVEL, prefetch: int = 1,
        pending_writes: int = 1, segmentation_dir: Path | None = None) -> RunSummary:
    """Process every case of this shard; problems are reported and counted, never raised (except setup ones).

    prefetch / pending_writes: see `overlapped` (0 and 0 process the cases one after another). The summary's
    precision is the predictor's `precision` attribute, when it has one. segmentation_dir: see the module's
    docstring (a predictor without `predict_with_segmentation` is a ValueError).
    """
    check_folders(input_dir, output_dir)
    if segmentation_dir is not None:
        check_segmentation_folder(segmentation_dir, input_dir, output_dir, predictor)
    found = discover_cases(input_dir, task)
    if not found:
        expected = " or ".join(n.file_name("<case>", "<modality>") for n in task.namings)
        raise ValueError(f"no cases in {input_dir} (expected {expected} files, flat or in a folder per case)")
    cases = select_shard(found, *shard)
    removed = prepare_output(output_dir) + (prepare_output(segmentation_dir) if segmentation_dir else [])
    if removed:
        _say(f"note: removed {len(removed)} unfinished file(s) that an interrupted run left in {output_dir}: "
             f"{', '.join(p.name for p in removed)}")
    notes: dict[str, list[str]] = {}

    def load(case: CaseFiles) -> CaseJob | None:
        job = plan_case(case, task, output_dir, overwrite, segmentation_dir)
        if job is None:
            return None
        notes[case.name] = job.notes
        return read_inputs(job, task)

    def compute(job: CaseJob | None) -> CaseJob | None:
        return None if job is None else synthesise(job, predictor, keep_inputs=qc)

    def store(job: CaseJob | None) -> CaseJob | None:
        return None if job is None else write_outputs(job, task, output_dir, qc, compression_level)

    summary = RunSummary(cases=len(cases), precision=getattr(predictor, "precision", None))
    start = time.perf_counter()
    with closing(overlapped(cases, load, compute, store, prefetch, pending_writes)) as outcomes:
        for case, outcome in tqdm(outcomes, total=len(cases), desc=task.name, unit="case", disable=not progress):
            for note in notes.pop(case.name, []):
                _say(f"note: {note}")
            _count(summary, case, outcome)
    summary.seconds = time.perf_counter() - start
    return summary


def _count(summary: RunSummary, case: CaseFiles, outcome: CaseJob | Exception | None) -> None:
    """Add the outcome of `case` to `summary`, with a line for a failed or skipped case."""
    if isinstance(outcome, Exception):  # one failing case must not stop the others, nor print a traceback
        summary.failed.append(describe_failure(case.name, outcome))
        _say(f"error: {summary.failed[-1]}")
    elif outcome is None:
        summary.skipped += 1
        _say(f"note: {case.name}: output exists, skipped (pass --overwrite to replace it)")
    else:
        summary.written += 1
        summary.timings.append(outcome.timings)
