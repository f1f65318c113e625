"""Atomic output writing: a hidden temporary file in the output folder, then os.replace onto the final name."""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same folder, hidden, same extension); on success it replaces
    `path`, on failure it is removed. Readers never see a half-written `path`."""
    tmp = path.parent / f".tmp-{uuid.uuid4().hex}-{path.name}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_nifti(path: Path, volume: np.ndarray, reference: nib.Nifti1Image, dtype: str = "float32") -> Path:
    """Write `volume` atomically to `path` with the affine and header of `reference`, stored as `dtype`
    (no intensity scaling)."""
    data = np.asarray(volume, dtype=dtype)
    image = type(reference)(data, reference.affine, reference.header)
    image.set_data_dtype(data.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return path
