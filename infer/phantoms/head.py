"""Synthetic paired head MR / CT cases for the mr2ct task (demos and tests, not for science).

Each case is a head on a grid larger than the model's 256 x 256 input (so inference uses sliding windows):
scalp, skull (cortical bone with a diploe), a thin CSF layer, cortical grey matter, white matter, ventricles
and a frontal air sinus, rendered as a T1-weighted MR (bright fat-rich scalp, dark bone, CSF darker than grey
matter, Rician noise in air and a bias field) and as the registered CT in Hounsfield units (air -1000, soft
tissue 20-60, bone 700-1800, Gaussian noise), both int16 with the same affine (0.9 x 0.9 x 2 mm, LPS).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from infer.phantoms.brain import SampleCase, smooth_noise
from conventions.tasks import MR2CT

HEAD_SHAPE = (288, 288, 48)
HEAD_AFFINE = np.array([[-0.9, 0, 0, 129.6], [0, -0.9, 0, 129.6], [0, 0, 2.0, -48.0], [0, 0, 0, 1.0]])

HEAD_TISSUES = ("scalp", "bone", "diploe", "csf", "gm", "wm", "sinus")
HEAD_CONTRAST: dict[str, dict[str, float]] = {
    # T1-weighted MR (scanner-like units) and CT (HU) per tissue; air is 0 in MR and -1000 HU in CT.
    "t1": {"scalp": 1300, "bone": 90, "diploe": 700, "csf": 260, "gm": 650, "wm": 900, "sinus": 40},
    "ct": {"scalp": -40, "bone": 1600, "diploe": 700, "csf": 8, "gm": 40, "wm": 28, "sinus": -950},
}


def head_tissues(rng: np.random.Generator, shape: tuple[int, int, int] = HEAD_SHAPE) -> np.ndarray:
    """Integer tissue map: 0 = air, i+1 = HEAD_TISSUES[i]."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    scale = np.array(shape, dtype=np.float32) / HEAD_SHAPE  # sizes below are for HEAD_SHAPE
    centre = np.array(shape, dtype=np.float32) / 2 + rng.uniform(-6, 6, 3) * scale * (1, 1, 0.3)

    def ellipsoid(offset: tuple[float, float, float], radii: np.ndarray) -> np.ndarray:
        c, r = centre + np.asarray(offset) * scale, radii * scale
        return np.sqrt(((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2)

    head_radii = np.array([100, 122, 30], dtype=np.float32) * rng.uniform(0.92, 1.05, 3)
    r = ellipsoid((0, 0, 0), head_radii) + 0.02 * smooth_noise(rng, (6, 6, 4), shape)
    code = {name: i + 1 for i, name in enumerate(HEAD_TISSUES)}
    tissue = np.zeros(shape, dtype=np.uint8)
    skull_outer, skull_inner = 0.93 + 0.01 * rng.standard_normal(), 0.85 + 0.01 * rng.standard_normal()
    folds = smooth_noise(rng, (24, 24, 10), shape)
    for name, inside in (("scalp", r < 1.0), ("bone", r < skull_outer),
                         ("diploe", (r < skull_outer - 0.025) & (r > skull_inner + 0.025)),
                         ("csf", r < skull_inner), ("gm", r < skull_inner - 0.02),
                         ("wm", r < skull_inner - 0.09 + 0.04 * folds)):
        tissue[inside] = code[name]
    for side in (-1, 1):
        tissue[ellipsoid((side * 9, -5, 0), np.array([6, 30, 8])) < 1] = code["csf"]  # lateral ventricles
    sinus = ellipsoid((0, -0.93 * head_radii[1], -6), np.array([14, 9, 6])) < 1  # frontal sinus
    tissue[sinus & (tissue > 0)] = code["sinus"]
    return tissue


def render_head(tissue: np.ndarray, modality: str, rng: np.random.Generator) -> np.ndarray:
    """Int16 volume of one modality: tissue values with texture and partial volume, plus modality noise."""
    values = np.zeros(len(HEAD_TISSUES) + 1, dtype=np.float32)
    values[0] = 0.0 if modality == "t1" else -1000.0
    for i, name in enumerate(HEAD_TISSUES):
        values[i + 1] = HEAD_CONTRAST[modality][name] * (rng.uniform(0.93, 1.07) if modality == "t1" else 1.0)
    image = gaussian_filter(values[tissue], 0.6)
    shape = tissue.shape
    if modality == "t1":
        image *= 1 + 0.05 * smooth_noise(rng, (12, 12, 6), shape) + 0.08 * smooth_noise(rng, (3, 3, 3), shape)
        sigma = 25.0
        image = np.hypot(image + sigma * rng.standard_normal(shape, dtype=np.float32),
                         sigma * rng.standard_normal(shape, dtype=np.float32))
    else:
        image += 12.0 * rng.standard_normal(shape, dtype=np.float32)
        image = np.maximum(image, -1024.0)
    return np.rint(image).astype(np.int16)


def make_head_case(name: str, seed: int, shape: tuple[int, int, int] = HEAD_SHAPE) -> SampleCase:
    """A paired case of the mr2ct task (no label map)."""
    rng = np.random.default_rng(seed)
    tissue = head_tissues(rng, shape)
    return SampleCase(name, {m: render_head(tissue, m, rng) for m in MR2CT.modalities}, None, HEAD_AFFINE)
