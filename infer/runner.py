"""Run a predictor over every case of an input folder: shards, skips, per-case errors, progress and a summary.

A bad case costs one line on stderr and is skipped; the others are processed. Outputs go to OUT only
(never into IN), named by the task's rule, each written atomically.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from infer.cases import CaseError, CaseFiles, check_case, discover_cases, read_case
from infer.engine import VolumePredictor
from infer.qc import save_qc
from infer.tasks import TaskSpec
from infer.writer import write_nifti

QC_FOLDER = "qc"


@dataclass
class RunSummary:
    """What a run did: cases written, skipped (outputs already there), failed (one line each), wall time."""

    cases: int = 0
    written: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        rate = self.cases / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.cases} case(s): {self.written} written, {self.skipped} skipped (output exists), "
                f"{len(self.failed)} failed in {self.seconds:.1f} s ({rate:.2f} cases/s)")


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


def describe_failure(case: str, err: Exception) -> str:
    """One line for a failed case: a CaseError as is, a ValueError by its message, anything else with its type."""
    if isinstance(err, CaseError):
        return str(err)
    first_line = (str(err).splitlines() or [""])[0]
    kind = "" if isinstance(err, ValueError) else f"unexpected {type(err).__name__}: "
    return f"{case}: {kind}{first_line}"


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def process_case(case: CaseFiles, task: TaskSpec, predictor: VolumePredictor, output_dir: Path,
                 overwrite: bool = False, qc: bool = False) -> bool:
    """Synthesise and write the outputs of one case; False when they all exist already (and not `overwrite`)."""
    outputs = {t: output_dir / task.file_name.format(case=case.name, modality=t) for t in check_case(case, task)}
    pending = {t: p for t, p in outputs.items() if overwrite or not p.exists()}
    if not pending:
        return False
    data = read_case(case, task)
    synthesis = {t: predictor.predict(data.volumes, t) for t in pending}
    for target, path in pending.items():
        write_nifti(path, synthesis[target], data.reference, task.output_dtype)
    if qc:
        save_qc(output_dir / QC_FOLDER / f"{case.name}.png", data.volumes, synthesis)
    return True


def run(task: TaskSpec, input_dir: Path, output_dir: Path, predictor: VolumePredictor, *,
        shard: tuple[int, int] = (0, 1), overwrite: bool = False, qc: bool = False,
        progress: bool = True) -> RunSummary:
    """Process every case of this shard; problems are reported and counted, never raised (except setup ones)."""
    check_folders(input_dir, output_dir)
    found = discover_cases(input_dir, task)
    if not found:
        expected = task.file_name.format(case="<case>", modality="<modality>")
        raise ValueError(f"no cases in {input_dir} (expected {expected} files, flat or in a folder per case)")
    cases = select_shard(found, *shard)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = RunSummary(cases=len(cases))
    start = time.perf_counter()
    for case in tqdm(cases, desc=task.name, unit="case", disable=not progress):
        try:
            if process_case(case, task, predictor, output_dir, overwrite, qc):
                summary.written += 1
            else:
                summary.skipped += 1
                _say(f"note: {case.name}: output exists, skipped (pass --overwrite to replace it)")
        except Exception as err:  # one failing case must not stop the others, nor print a traceback
            summary.failed.append(describe_failure(case.name, err))
            _say(f"error: {summary.failed[-1]}")
    summary.seconds = time.perf_counter() - start
    return summary
