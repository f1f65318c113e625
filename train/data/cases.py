"""Training cases: discovery in BraTS-layout folders, the seeded case-level split, and reading one case."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from infer.engine.cases import CaseError, case_naming, discover_cases, load_volume
from conventions.naming import BRATS_2023, SEGMENTATION, Naming
from conventions.tasks import ALL_TASKS, TaskSpec


@dataclass(frozen=True)
class TrainCase:
    """A case with every modality of the task (modality -> file), its segmentation when present
    (`<case>-seg.nii.gz` or `<case>_seg.nii.gz` beside the modalities) and the naming convention of its files."""

    name: str
    files: dict[str, Path]
    seg: Path | None
    naming: Naming = BRATS_2023


def get_task(name: str) -> TaskSpec:
    try:
        return ALL_TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(ALL_TASKS)}") from None


def find_cases(roots: Sequence[str | Path], task: TaskSpec) -> list[TrainCase]:
    """Every case under `roots` that has all of the task's modalities, sorted by name; others are skipped with
    a warning. Segmentations are picked up when present."""
    if not roots:
        raise ValueError("no data folders given (data.roots is empty)")
    cases: list[TrainCase] = []
    incomplete: list[str] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise ValueError(f"data folder not found: {root}")
        for found in discover_cases(root, task):
            if set(found.files) != set(task.modalities):
                incomplete.append(found.name)
                continue
            try:
                naming = case_naming(found, task)
            except CaseError as err:
                raise ValueError(str(err)) from None
            seg = next(iter(found.files.values())).parent / naming.file_name(found.name, SEGMENTATION)
            cases.append(TrainCase(found.name, dict(found.files), seg if seg.is_file() else None, naming))
    if incomplete:
        warnings.warn(f"skipped {len(incomplete)} case(s) lacking a modality: {', '.join(incomplete[:5])}"
                      + (" ..." if len(incomplete) > 5 else ""), stacklevel=2)
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"case {duplicates[0]} appears in more than one data folder")
    if not cases:
        raise ValueError(f"no complete case in {', '.join(map(str, roots))}")
    return sorted(cases, key=lambda c: c.name)


def split_cases(cases: Sequence[TrainCase], val_fraction: float, val_names: Sequence[str], seed: int
                ) -> tuple[list[TrainCase], list[TrainCase]]:
    """(train, validation) by case, never by slice: the named cases, or a seeded `val_fraction` of them."""
    if val_names:
        unknown = sorted(set(val_names) - {c.name for c in cases})
        if unknown:
            raise ValueError(f"validation case {unknown[0]} is not among the {len(cases)} cases found")
        held = set(val_names)
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        order = np.random.default_rng(seed).permutation(len(cases))
        held = {cases[i].name for i in order[:round(val_fraction * len(cases))]}
    return [c for c in cases if c.name not in held], [c for c in cases if c.name in held]


def load_case(case: TrainCase, modalities: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Raw float32 volumes keyed by modality and the uint8 label map in 2023 labels (None without a
    segmentation)."""
    volumes = {m: load_volume(case.name, case.files[m])[1] for m in modalities}
    shapes = {v.shape for v in volumes.values()}
    if len(shapes) != 1:
        raise ValueError(f"{case.name}: modalities differ in shape ({sorted(shapes)})")
    seg = None
    if case.seg is not None:
        seg = case.naming.read_labels(np.asarray(nib.load(case.seg).dataobj).astype(np.uint8))
        if seg.shape != next(iter(shapes)):
            raise ValueError(f"{case.name}: segmentation shape {seg.shape} differs from {next(iter(shapes))}")
    return volumes, seg
