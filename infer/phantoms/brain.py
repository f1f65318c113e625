"""Building blocks of the synthetic sample cases (`infer.sample`): MR tissue contrast and rendering, smooth random
fields, writing a case."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter


TISSUES = ("wm", "gm", "deep_gm", "csf", "vessel", "necrosis", "enhancing", "oedema")
# Mean intensity of each tissue per modality (raw scanner-like units, relative contrasts after real BraTS cases).
# Vessels: cortical veins and sinuses enhance on t1c and are flow voids (dark) on T2 and FLAIR.
CONTRAST: dict[str, dict[str, float]] = {
    "t1c": {"wm": 1500, "gm": 1150, "deep_gm": 1250, "csf": 450, "vessel": 3400, "necrosis": 1100, "enhancing": 3600, "oedema": 1500},
    "t1n": {"wm": 950, "gm": 720, "deep_gm": 800, "csf": 300, "vessel": 650, "necrosis": 600, "enhancing": 850, "oedema": 780},
    "t2f": {"wm": 900, "gm": 1150, "deep_gm": 1050, "csf": 200, "vessel": 250, "necrosis": 1300, "enhancing": 1500, "oedema": 1750},
    "t2w": {"wm": 420, "gm": 650, "deep_gm": 560, "csf": 1900, "vessel": 300, "necrosis": 1800, "enhancing": 700, "oedema": 1100},
}
SEG_LABELS = {"necrosis": 1, "oedema": 2, "enhancing": 3}
ACQUISITION_BLUR_MM: dict[str, tuple[float, float, float]] = {
    # Gaussian sigma per axis standing in for each sequence's acquired resolution: BraTS t1c is a 3D ~1 mm
    # acquisition, t1n often a 2D one with thick slices (on the public cases its mean gradient is ~0.45x t1c's),
    # T2 and FLAIR 2D with thicker slices than in-plane pixels.
    "t1c": (0.0, 0.0, 0.0),
    "t1n": (1.2, 1.2, 1.6),
    "t2f": (0.4, 0.4, 0.9),
    "t2w": (0.3, 0.3, 0.8),
}


@dataclass(frozen=True)
class SampleCase:
    """One generated case: int16 volumes keyed by modality, the label map (None when the task has none) and
    the affine every file shares."""

    name: str
    images: dict[str, np.ndarray]
    seg: np.ndarray | None
    affine: np.ndarray


def smooth_noise(rng: np.random.Generator, coarse: tuple[int, int, int], shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-ish smooth random field of `shape`: coarse Gaussian noise upsampled trilinearly."""
    grid = torch.from_numpy(rng.standard_normal(coarse).astype(np.float32))[None, None]
    return F.interpolate(grid, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()


def write_case(case: SampleCase, output: Path, drop: str | Sequence[str] | None = None) -> Path:
    """Write `output/<case>/<case>-<mod>.nii.gz` (+ `-seg` when there is one), leaving out the modality or
    modalities `drop`."""
    drop = (drop,) if isinstance(drop, str) else tuple(drop or ())
    folder = output / case.name
    folder.mkdir(parents=True, exist_ok=True)
    for modality, volume in case.images.items():
        if modality not in drop:
            nib.save(nib.Nifti1Image(volume, case.affine), folder / f"{case.name}-{modality}.nii.gz")
    if case.seg is not None:
        nib.save(nib.Nifti1Image(case.seg, case.affine), folder / f"{case.name}-seg.nii.gz")
    return folder


def render(tissue: np.ndarray, modality: str, rng: np.random.Generator) -> np.ndarray:
    """Intensity volume of one modality on the grid of `tissue` (codes of TISSUES): tissue means with texture,
    acquisition blur, partial volume, bias field and Rician noise; 0 outside the tissue."""
    shape = tissue.shape
    means = np.zeros(len(TISSUES) + 1, dtype=np.float32)
    for i, name in enumerate(TISSUES):
        means[i + 1] = CONTRAST[modality][name] * rng.uniform(0.93, 1.07)
    image = means[tissue]
    image *= 1 + 0.04 * smooth_noise(rng, (40, 40, 26), shape)  # tissue texture
    if any(ACQUISITION_BLUR_MM[modality]):
        image = gaussian_filter(image, ACQUISITION_BLUR_MM[modality], truncate=3.0)
    blurred = F.avg_pool3d(torch.from_numpy(image)[None, None], 3, stride=1, padding=1,
                           count_include_pad=False)[0, 0].numpy()
    brain = tissue > 0
    image = np.where(brain, blurred, 0.0).astype(np.float32)  # partial volume inside, sharp skull-stripped edge
    image *= 1 + 0.08 * smooth_noise(rng, (3, 3, 3), shape)  # bias field
    sigma = 0.02 * means[1]
    noisy = np.hypot(image + sigma * rng.standard_normal(shape, dtype=np.float32),
                     sigma * rng.standard_normal(shape, dtype=np.float32))
    return np.where(brain, np.clip(np.rint(noisy), 1, np.iinfo(np.int16).max), 0).astype(np.int16)
