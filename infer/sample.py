"""Synthetic sample cases: `python -m infer.sample --output DIR [--task T] [--cases N] [--seed S] [--drop MOD...]`.

brasyn (default): 240x240x155 at 1 mm in the BraTS LPS orientation, int16 like BraTS: a skull-stripped brain
with cortical grey matter, white matter, deep grey matter, ventricles and cortical veins, a glioma-like tumour
(necrotic core, enhancing rim, oedema) with its `-seg` (1 NETC, 2 ED, 3 ET), per-modality tissue contrast
modelled on real BraTS medians, per-sequence resolution, a smooth multiplicative bias field and Rician noise.
mr2ct: paired head T1 MR and CT (`infer.phantoms.head`); us2mr: intra-operative ultrasound with the registered
T2w and FLAIR (`infer.phantoms.ultrasound`). For demos and tests, not for science.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from infer.phantoms.head import make_head_case
from infer.phantoms.brain import SEG_LABELS, TISSUES, SampleCase, render, smooth_noise, write_case
from conventions.tasks import BRATS_MODALITIES, TASKS
from infer.phantoms.ultrasound import make_us_case

SHAPE = (240, 240, 155)
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
"""BraTS orientation (LPS, 1 mm), as in the public BraTS cases."""

def _smooth_noise(rng: np.random.Generator, coarse: tuple[int, int, int]) -> np.ndarray:
    return smooth_noise(rng, coarse, SHAPE)


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
    veins = brain & (r > 0.9) & (np.abs(_smooth_noise(rng, (20, 20, 14))) < 0.035)  # thin tortuous strips
    tissue[veins] = code["vessel"]
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


def make_case(name: str, seed: int) -> SampleCase:
    rng = np.random.default_rng(seed)
    tissue, seg = tissue_map(rng)
    return SampleCase(name, {m: render(tissue, m, rng) for m in BRATS_MODALITIES}, seg, AFFINE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infer.sample", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="folder to write case folders into")
    parser.add_argument("--task", choices=tuple(MAKERS), default="brasyn",
                        help="brasyn: BraTS cases (default); mr2ct: paired head T1 MR and CT; us2mr: ultrasound with T2w/FLAIR")
    parser.add_argument("--cases", type=int, default=1, help="number of cases (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed + i")
    parser.add_argument("--drop", nargs="+", default=None, metavar="MOD",
                        help="modalities to leave out of every case (us2mr: --drop t2w t2f), or 'random' for one "
                             "at random per case (default: keep all of them)")
    parser.add_argument("--prefix", default=None, help="case name prefix (default BraTS-SYN, HEAD-SYN, US-SYN by task)")
    args = parser.parse_args(argv)
    modalities = TASKS[args.task].modalities
    if args.drop not in (None, ["random"]) and not set(args.drop) <= set(modalities):
        parser.error(f"--drop takes modalities of {', '.join(modalities)}, or 'random'")
    make, prefix = MAKERS[args.task]
    rng = np.random.default_rng(args.seed)
    for i in tqdm(range(args.cases), desc="sample cases", unit="case", file=sys.stderr):
        drop = rng.choice(modalities) if args.drop == ["random"] else args.drop
        write_case(make(f"{args.prefix or prefix}-{args.seed + i:05d}-000", args.seed + i), args.output, drop)
    return 0


MAKERS = {"brasyn": (make_case, "BraTS-SYN"), "mr2ct": (make_head_case, "HEAD-SYN"),
          "us2mr": (make_us_case, "US-SYN")}
"""Case generator and default name prefix per task."""


if __name__ == "__main__":
    raise SystemExit(main())
