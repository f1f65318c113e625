"""Case discovery, validation and NIfTI reading.

Two input layouts are accepted, both named by one of the task's naming conventions (`conventions.naming`; BraSyn:
`<case>-<modality>.nii.gz` or the 2018-2021 `<case>_<flair|t1|t1ce|t2>.nii.gz`): a folder per case,
`IN/<case>/<case>-<modality>.nii.gz` (the BraTS layout the `brats` package mounts), and a flat folder,
`IN/<case>-<modality>.nii.gz`. A case whose files mix conventions is an error. Hidden entries (names starting with '.') are ignored.
Every problem is a `CaseError`: one line naming the case and, where there is one, the file.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from infer.engine.intensity import foreground
from conventions.naming import Naming
from conventions.tasks import TaskSpec

AFFINE_TOLERANCE = 1e-3
"""Largest difference (mm, or mm per voxel) between two inputs' affines that still counts as equal."""


class CaseError(Exception):
    """A problem with one case; str() is a single line `case: file: message`."""

    def __init__(self, case: str, message: str, file: Path | None = None) -> None:
        where = f"{case}: {file.name}" if file is not None else case
        super().__init__(f"{where}: {' '.join(message.split())}")


Decoded = dict[str, tuple[nib.Nifti1Image, np.ndarray]]
"""Inputs of a case as read: modality -> (image, float32 data), not yet validated."""


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case as found on disk: modality -> path, entries that fit no expected name, and each
    naming convention its files follow with a file that follows it (more than one is an error)."""

    name: str
    files: dict[str, Path] = field(default_factory=dict)
    unknown: tuple[Path, ...] = ()
    namings: tuple[tuple[Naming, Path], ...] = ()


@dataclass(frozen=True)
class CaseVolumes:
    """A validated case: raw float32 volumes keyed by modality, and the image whose header and affine the
    outputs take (the first available input in the task's modality order)."""

    name: str
    volumes: dict[str, np.ndarray]
    reference: nib.Nifti1Image


def _patterns(task: TaskSpec) -> list[tuple[Naming, re.Pattern[str]]]:
    """One file-name pattern per naming convention of the task (groups `case` and `token`)."""
    return [(n, n.pattern((*task.modalities, *task.ignored))) for n in task.namings]


def parse_file_name(name: str, task: TaskSpec) -> tuple[str, str, Naming] | None:
    """(case, modality, naming) of a file name in one of the task's conventions, or None."""
    for naming, pattern in _patterns(task):
        match = pattern.fullmatch(name)
        if match:
            return match["case"], naming.modality(match["token"]), naming
    return None


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def discover_cases(input_dir: Path, task: TaskSpec) -> list[CaseFiles]:
    """Every case under `input_dir` (both layouts, any of the task's naming conventions), sorted by name.

    A flat file whose name does not parse becomes a case of its own name with only that unknown entry.
    """
    files: dict[str, dict[str, Path]] = {}
    unknown: dict[str, list[Path]] = {}
    namings: dict[str, list[tuple[Naming, Path]]] = {}

    def add(case: str, path: Path, parsed: tuple[str, str, Naming] | None) -> None:
        found = files.setdefault(case, {})
        seen = namings.setdefault(case, [])
        if parsed is not None and all(n != parsed[2] for n, _ in seen):
            seen.append((parsed[2], path))
        modality = parsed[1] if parsed is not None else None
        if modality in task.ignored:
            return
        if modality is None or modality in found:
            unknown.setdefault(case, []).append(path)
        else:
            found[modality] = path

    for entry in _visible(input_dir):
        if entry.is_dir():
            files.setdefault(entry.name, {})
            for path in _visible(entry):
                parsed = parse_file_name(path.name, task) if path.is_file() else None
                add(entry.name, path, parsed if parsed and parsed[0] == entry.name else None)
        else:
            parsed = parse_file_name(entry.name, task)
            add(parsed[0] if parsed else entry.name, entry, parsed)
    return [CaseFiles(name, found, tuple(unknown.get(name, ())), tuple(namings.get(name, ())))
            for name, found in sorted(files.items())]


def case_naming(case: CaseFiles, task: TaskSpec) -> Naming:
    """The one naming convention of `case`'s files (the task's default for a case without any); CaseError
    when its files mix conventions."""
    if len(case.namings) > 1:
        (first, path1), (second, path2) = case.namings[:2]
        raise CaseError(case.name, f"mixes naming conventions: {path1.name} is {first.name}, {path2.name} is "
                                   f"{second.name}", path2)
    return case.namings[0][0] if case.namings else task.namings[0]


def check_case(case: CaseFiles, task: TaskSpec) -> tuple[str, ...]:
    """The outputs of `case`: the targets it lacks, or the task's product; CaseError when its files do not fit."""
    naming = case_naming(case, task)
    if case.unknown:
        expected = naming.file_name(case.name, "<modality>")
        tokens = ", ".join(naming.token(m) for m in task.modalities)
        raise CaseError(case.name, f"unknown or duplicate file name (expected {expected}, <modality> one of "
                                   f"{tokens})", case.unknown[0])
    count = len(case.files)
    if not task.min_inputs <= count <= task.max_inputs:
        needed = f"{task.min_inputs}" + (f" to {task.max_inputs}" if task.max_inputs > task.min_inputs else "")
        found = ", ".join(m for m in task.modalities if m in case.files) or "none"
        raise CaseError(case.name, f"found {count} input modalities ({found}), task {task.name} needs {needed}")
    not_inputs = [m for m in task.modalities if m in case.files and m not in task.input_modalities]
    if not_inputs:
        raise CaseError(case.name, f"{not_inputs[0]} is not an input of task {task.name} (inputs: "
                                   f"{', '.join(task.input_modalities)})", case.files[not_inputs[0]])
    if task.product is not None:
        return (task.product,)
    targets = tuple(m for m in task.requested_targets if m not in case.files)
    if not targets:
        raise CaseError(case.name, f"nothing to synthesise: every one of {', '.join(task.requested_targets)} "
                                   "is present")
    return targets


def decode_volume(case: str, path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Read and decode one file: the image (its data not cached) and the data as float32; CaseError when
    unreadable or not 3D."""
    try:
        image = nib.load(path)
        data = image.get_fdata(dtype=np.float32, caching="unchanged") if len(image.shape) == 3 else None
    except Exception as err:  # nibabel, gzip and zlib raise many types for corrupt or truncated files
        raise CaseError(case, f"unreadable ({type(err).__name__}: {err})", path) from None
    if data is None:
        raise CaseError(case, f"not a 3D image (shape {image.shape})", path)
    return image, data


def check_volume(case: str, path: Path, data: np.ndarray) -> None:
    """CaseError when `data` (read from `path`) has NaN or infinite voxels, or none above 0."""
    finite = np.isfinite(data)
    if not finite.all():
        raise CaseError(case, f"{data.size - np.count_nonzero(finite)} voxels are NaN or infinite", path)
    if not foreground(data).any():
        raise CaseError(case, "empty volume (no voxel above 0)", path)


def load_volume(case: str, path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """The image and its data as float32; CaseError when unreadable, not 3D, not finite or empty."""
    image, data = decode_volume(case, path)
    check_volume(case, path, data)
    return image, data


def decode_case(case: CaseFiles, task: TaskSpec) -> Decoded:
    """Every input of `case`, read and decoded, keyed by modality in the task's order (checked by
    `validate_case`)."""
    decoded = {m: decode_volume(case.name, case.files[m]) for m in task.modalities if m in case.files}
    if not decoded:
        raise CaseError(case.name, "no input files")
    return decoded


def validate_case(case: CaseFiles, decoded: Decoded) -> CaseVolumes:
    """Check the `decode_case` inputs of `case` (finite, not empty, one shape and affine) in order; the first
    one is the reference."""
    reference_modality = next(iter(decoded))
    reference, reference_path = decoded[reference_modality][0], case.files[reference_modality]
    for modality, (image, data) in decoded.items():
        path = case.files[modality]
        check_volume(case.name, path, data)
        if image.shape != reference.shape:
            raise CaseError(case.name, f"shape {image.shape} differs from {reference.shape} of "
                                       f"{reference_path.name}", path)
        if not np.allclose(image.affine, reference.affine, rtol=0.0, atol=AFFINE_TOLERANCE):
            raise CaseError(case.name, f"affine differs from that of {reference_path.name}", path)
    return CaseVolumes(case.name, {m: data for m, (_, data) in decoded.items()}, reference)


def read_split(path: str | Path) -> tuple[list[str], list[str]]:
    """(train, validation) case names of a split file: JSON with "train" and "validation" lists."""
    try:
        data = json.loads(Path(path).read_text())
        train, validation = list(data["train"]), list(data["validation"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read split file {path}: {type(err).__name__}: {err}") from None
    both = sorted(set(train) & set(validation))
    if both:
        raise ValueError(f"split file {path}: {both[0]} is both a training and a validation case")
    return train, validation
