"""Synthetic BraTS-format sample cases: `python -m infer.sample --output DIR [--cases N] [--seed S] [--drop MOD]`.

Each case is 240x240x155 at 1 mm in the BraTS LPS orientation, int16 like BraTS: a skull-stripped brain with
cortical grey matter, white matter, deep grey matter and ventricles, a glioma-like tumour (necrotic core,
enhancing rim, oedema) with its `-seg` (1 NETC, 2 ED, 3 ET), per-modality tissue contrast modelled on real
BraTS medians, a smooth multiplicative bias field and Rician noise. For demos and tests, not for science.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from infer.tasks import BRATS_MODALITIES

SHAPE = (240, 240, 155)
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
"""BraTS orientation (LPS, 1 mm), as in the public BraTS cases."""

TISSUES = ("wm", "gm", "deep_gm", "csf", "necrosis", "enhancing", "oedema")
# Mean intensity of each tissue per modality (raw scanner-like units, relative contrasts after real BraTS cases).
CONTRAST: dict[str, dict[str, float]] = {
    "t1c": {"wm": 1500, "gm": 1150, "deep_gm": 1250, "csf": 450, "necrosis": 1100, "enhancing": 3600, "oedema": 1500},
    "t1n": {"wm": 950, "gm": 720, "deep_gm": 800, "csf": 300, "necrosis": 600, "enhancing": 850, "oedema": 780},
    "t2f": {"wm": 900, "gm": 1150, "deep_gm": 1050, "csf": 200, "necrosis": 1300, "enhancing": 1500, "oedema": 1750},
    "t2w": {"wm": 420, "gm": 650, "deep_gm": 560, "csf": 1900, "necrosis": 1800, "enhancing": 700, "oedema": 1100},
}
SEG_LABELS = {"necrosis": 1, "oedema": 2, "enhancing": 3}


@dataclass(frozen=True)
class SampleCase:
    name: str
    images: dict[str, np.ndarray]  # modality -> int16 volume
    seg: np.ndarray  # uint8 labels


def _smooth_noise(rng: np.random.Generator, coarse: tuple[int, int, int], shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """Zero-mean, unit-ish smooth random field: coarse Gaussian noise upsampled trilinearly."""
    grid = torch.from_numpy(rng.standard_normal(coarse).astype(np.float32))[None, None]
    return F.interpolate(grid, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()


def _coords() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij", sparse=True)


def _ellipsoid(x, y, z, centre, radii) -> np.ndarray:
    """Normalised ellipsoidal radius (< 1 inside)."""
    return np.sqrt(((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2)


def tissue_map(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Integer tissue map (0 = background, i+1 = TISSUES[i]) and the BraTS segmentation."""
    x, y, z = _coords()
    centre = np.array([120, 125, 75]) + rng.uniform(-4, 4, 3)
    radii = np.array([66, 82, 68]) * rng.uniform(0.92, 1.06, 3)
    r = _ellipsoid(x, y, z, centre, radii) + 0.05 * _smooth_noise(rng, (6, 6, 5))
    brain = r < 1.0
    tissue = np.zeros(SHAPE, dtype=np.uint8)
    code = {name: i + 1 for i, name in enumerate(TISSUES)}
    # Cortical ribbon with folding: thicker/thinner where a finer random field says so.
    folds = _smooth_noise(rng, (30, 30, 20))
    tissue[brain] = code["wm"]
    tissue[brain & (r > 0.84 + 0.07 * folds)] = code["gm"]
    tissue[brain & (r > 0.975)] = code["csf"]  # thin CSF layer at the surface
    sulci = brain & (r > 0.8) & (np.abs(_smooth_noise(rng, (36, 36, 24))) < 0.12)
    tissue[sulci] = code["csf"]
    for side in (-1, 1):  # deep grey matter and lateral ventricles
        tissue[_ellipsoid(x, y, z, centre + [side * 14, 2, -2], [9, 13, 9]) < 1] = code["deep_gm"]
        vent = _ellipsoid(x, y, z, centre + [side * 7, -4, 8], [5, 26, 8]) + 0.15 * _smooth_noise(rng, (8, 8, 6))
        tissue[vent < 1] = code["csf"]
    # Tumour in one hemisphere: oedema > enhancing rim > necrotic core, irregular boundaries.
    t_centre = centre + [rng.choice([-1, 1]) * rng.uniform(22, 34), rng.uniform(-30, 30), rng.uniform(-15, 20)]
    size = rng.uniform(13, 21)
    t_r = _ellipsoid(x, y, z, t_centre, size * rng.uniform(0.85, 1.15, 3)) + 0.12 * _smooth_noise(rng, (10, 10, 8))
    seg = np.zeros(SHAPE, dtype=np.uint8)
    for name, limit in (("oedema", rng.uniform(1.5, 2.0)), ("enhancing", 1.0), ("necrosis", rng.uniform(0.55, 0.75))):
        region = brain & (t_r < limit)
        tissue[region] = code[name]
        seg[region] = SEG_LABELS[name]
    return tissue, seg


def render(tissue: np.ndarray, modality: str, rng: np.random.Generator) -> np.ndarray:
    """Intensity volume of one modality: tissue means with texture, partial volume, bias field and Rician noise."""
    means = np.zeros(len(TISSUES) + 1, dtype=np.float32)
    for i, name in enumerate(TISSUES):
        means[i + 1] = CONTRAST[modality][name] * rng.uniform(0.93, 1.07)
    image = means[tissue]
    image *= 1 + 0.04 * _smooth_noise(rng, (40, 40, 26))  # tissue texture
    blurred = F.avg_pool3d(torch.from_numpy(image)[None, None], 3, stride=1, padding=1, count_include_pad=False)[0, 0].numpy()
    brain = tissue > 0
    image = np.where(brain, blurred, 0.0).astype(np.float32)  # partial volume inside, sharp skull-stripped edge
    image *= 1 + 0.08 * _smooth_noise(rng, (3, 3, 3))  # bias field
    sigma = 0.02 * means[1]
    noisy = np.hypot(image + sigma * rng.standard_normal(SHAPE, dtype=np.float32), sigma * rng.standard_normal(SHAPE, dtype=np.float32))
    return np.where(brain, np.clip(np.rint(noisy), 1, np.iinfo(np.int16).max), 0).astype(np.int16)


def make_case(name: str, seed: int) -> SampleCase:
    rng = np.random.default_rng(seed)
    tissue, seg = tissue_map(rng)
    return SampleCase(name, {m: render(tissue, m, rng) for m in BRATS_MODALITIES}, seg)


def write_case(case: SampleCase, output: Path, drop: str | None = None) -> Path:
    """Write `output/<case>/<case>-<mod>.nii.gz` (+ `-seg`), leaving out modality `drop`."""
    folder = output / case.name
    folder.mkdir(parents=True, exist_ok=True)
    for modality, volume in case.images.items():
        if modality != drop:
            nib.save(nib.Nifti1Image(volume, AFFINE), folder / f"{case.name}-{modality}.nii.gz")
    nib.save(nib.Nifti1Image(case.seg, AFFINE), folder / f"{case.name}-seg.nii.gz")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infer.sample", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="folder to write BraTS-layout cases into")
    parser.add_argument("--cases", type=int, default=1, help="number of cases (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed + i")
    parser.add_argument("--drop", default=None, help="modality to leave out of every case, or 'random' (default: keep all four)")
    parser.add_argument("--prefix", default="BraTS-SYN", help="case name prefix (default BraTS-SYN)")
    args = parser.parse_args(argv)
    if args.drop not in (None, "random", *BRATS_MODALITIES):
        parser.error(f"--drop must be one of {', '.join(BRATS_MODALITIES)} or 'random'")
    rng = np.random.default_rng(args.seed)
    for i in tqdm(range(args.cases), desc="sample cases", unit="case", file=sys.stderr):
        drop = rng.choice(BRATS_MODALITIES) if args.drop == "random" else args.drop
        write_case(make_case(f"{args.prefix}-{args.seed + i:05d}-000", args.seed + i), args.output, drop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
