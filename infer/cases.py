"""Case discovery, validation and NIfTI reading.

Two input layouts are accepted, both named by the task's `file_name` rule (BraSyn: `<case>-<modality>.nii.gz`):
a folder per case, `IN/<case>/<case>-<modality>.nii.gz` (the BraTS layout the `brats` package mounts), and a
flat folder, `IN/<case>-<modality>.nii.gz`. Hidden entries (names starting with '.') are ignored.
Every problem is a `CaseError`: one line naming the case and, where there is one, the file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from infer.intensity import foreground
from infer.tasks import TaskSpec

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
    """The files of one case as found on disk: modality -> path, and entries that fit no expected name."""

    name: str
    files: dict[str, Path] = field(default_factory=dict)
    unknown: tuple[Path, ...] = ()


@dataclass(frozen=True)
class CaseVolumes:
    """A validated case: raw float32 volumes keyed by modality, and the image whose header and affine the
    outputs take (the first available input in the task's modality order)."""

    name: str
    volumes: dict[str, np.ndarray]
    reference: nib.Nifti1Image


def _name_pattern(task: TaskSpec) -> re.Pattern[str]:
    """Regular expression of `task.file_name` with the groups `case` and `modality`."""
    pattern = re.escape(task.file_name)
    pattern = pattern.replace(re.escape("{case}"), "(?P<case>.+)", 1)
    modalities = "|".join(re.escape(m) for m in (*task.modalities, *task.ignored))
    return re.compile(pattern.replace(re.escape("{modality}"), f"(?P<modality>{modalities})", 1))


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def discover_cases(input_dir: Path, task: TaskSpec) -> list[CaseFiles]:
    """Every case under `input_dir` (both layouts), sorted by name.

    A flat file whose name does not parse becomes a case of its own name with only that unknown entry.
    """
    pattern = _name_pattern(task)
    files: dict[str, dict[str, Path]] = {}
    unknown: dict[str, list[Path]] = {}

    def add(case: str, path: Path, modality: str | None) -> None:
        found = files.setdefault(case, {})
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
                match = pattern.fullmatch(path.name) if path.is_file() else None
                add(entry.name, path, match["modality"] if match and match["case"] == entry.name else None)
        else:
            match = pattern.fullmatch(entry.name)
            add(match["case"] if match else entry.name, entry, match["modality"] if match else None)
    return [CaseFiles(name, found, tuple(unknown.get(name, ()))) for name, found in sorted(files.items())]


def check_case(case: CaseFiles, task: TaskSpec) -> tuple[str, ...]:
    """The modalities to synthesise for `case` (the targets it lacks); CaseError when its files do not fit."""
    if case.unknown:
        expected = task.file_name.format(case=case.name, modality="<modality>")
        raise CaseError(case.name, f"unknown or duplicate file name (expected {expected}, <modality> one of "
                                   f"{', '.join(task.modalities)})", case.unknown[0])
    count = len(case.files)
    if not task.min_inputs <= count <= task.max_inputs:
        needed = f"{task.min_inputs}" + (f" to {task.max_inputs}" if task.max_inputs > task.min_inputs else "")
        found = ", ".join(m for m in task.modalities if m in case.files) or "none"
        raise CaseError(case.name, f"found {count} input modalities ({found}), task {task.name} needs {needed}")
    not_inputs = [m for m in task.modalities if m in case.files and m not in task.input_modalities]
    if not_inputs:
        raise CaseError(case.name, f"{not_inputs[0]} is not an input of task {task.name} (inputs: "
                                   f"{', '.join(task.input_modalities)})", case.files[not_inputs[0]])
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
