"""Synthetic intra-operative ultrasound cases for the us2mr task (demos and tests, not for science).

Each case is a block of brain around a glioma (cortical surface with sulci at the top, grey and white matter,
part of a ventricle, a tumour with necrotic core, enhancing rim and oedema) on a 1 mm grid. The ultrasound is
a fan-shaped (conical) field of view from a probe on the cortical surface: echogenicity per tissue (fluid dark,
tumour and its rim bright), bright interfaces, depth attenuation and multiplicative speckle, uint8, 0 outside
the fan. The registered pre-operative T2w and FLAIR are rendered with the BraTS phantom's contrast and
resolution (`infer.sample.render`) and, as after resampling to the ultrasound grid and cropping, kept inside
the ultrasound's field of view only.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from infer.phantoms.brain import SEG_LABELS, TISSUES, SampleCase, render, smooth_noise
from conventions.tasks import US2MR

US_SHAPE = (128, 128, 96)
US_AFFINE = np.array([[1.0, 0, 0, -64.0], [0, 1.0, 0, -64.0], [0, 0, 1.0, -48.0], [0, 0, 0, 1.0]])

ECHOGENICITY: dict[str, float] = {
    # relative ultrasound backscatter per tissue; 0 is fluid above the cortex (saline in the resection field)
    "wm": 0.35, "gm": 0.26, "deep_gm": 0.3, "csf": 0.04, "vessel": 0.5,
    "necrosis": 0.15, "enhancing": 0.85, "oedema": 0.55,
}
FAN_HALF_ANGLE = np.deg2rad(38.0)


def region_tissues(rng: np.random.Generator, shape: tuple[int, int, int] = US_SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Tissue map (codes of `infer.sample.TISSUES`, 0 above the cortex) and BraTS labels of a brain block whose
    cortical surface lies near y = 0 (the probe side)."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    h = shape[1]
    code = {name: i + 1 for i, name in enumerate(TISSUES)}
    depth = y - (0.12 * h + 0.03 * h * smooth_noise(rng, (5, 1, 4), shape))  # below the cortical surface
    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[depth > 0] = code["gm"]
    tissue[depth > 0.05 * h + 0.03 * h * smooth_noise(rng, (10, 1, 8), shape)] = code["wm"]
    sulci = (depth > 0) & (depth < 0.1 * h) & (np.abs(smooth_noise(rng, (14, 4, 10), shape)) < 0.1)
    tissue[sulci] = code["csf"]
    centre = np.array([shape[0] / 2, 0.5 * h, shape[2] / 2]) + rng.uniform(-0.06, 0.06, 3) * np.array(shape)
    ventricle = np.sqrt(((x - shape[0] * 0.78) / (0.06 * h)) ** 2 + ((y - 0.85 * h) / (0.08 * h)) ** 2
                        + ((z - centre[2]) / (0.3 * h)) ** 2) < 1
    tissue[ventricle] = code["csf"]
    size = rng.uniform(0.1, 0.14) * h
    r = np.sqrt(((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)) / size \
        + 0.12 * smooth_noise(rng, (8, 8, 6), shape)
    seg = np.zeros(shape, dtype=np.uint8)
    for name, limit in (("oedema", rng.uniform(1.4, 1.8)), ("enhancing", 1.0), ("necrosis", rng.uniform(0.5, 0.7))):
        region = (tissue > 0) & (r < limit)
        tissue[region] = code[name]
        seg[region] = SEG_LABELS[name]
    return tissue, seg


def fan(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Boolean conical field of view: apex just above the top face (y = 0), opening towards +y."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    apex = np.array([shape[0] / 2, -0.05 * shape[1], shape[2] / 2]) + rng.uniform(-0.04, 0.04, 3) * shape
    dy = y - apex[1]
    radial = np.sqrt((x - apex[0]) ** 2 + (z - apex[2]) ** 2)
    reach = np.sqrt(dy ** 2 + radial ** 2)
    return (dy > 0) & (radial < np.tan(FAN_HALF_ANGLE) * dy) & (reach < 0.95 * shape[1])


def render_us(tissue: np.ndarray, field: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 B-mode-like volume: echogenicity, bright interfaces, depth attenuation, speckle; 0 outside `field`."""
    echo = np.zeros(len(TISSUES) + 1, dtype=np.float32)
    echo[0] = 0.02
    for i, name in enumerate(TISSUES):
        echo[i + 1] = ECHOGENICITY[name]
    image = gaussian_filter(echo[tissue], 0.8)
    edges = np.sqrt(sum(g ** 2 for g in np.gradient(image)))
    image = image + 2.5 * edges
    depth = np.arange(tissue.shape[1], dtype=np.float32)[None, :, None]
    image *= np.exp(-depth / (2.0 * tissue.shape[1]))
    speckle = gaussian_filter(rng.rayleigh(1.0, tissue.shape).astype(np.float32), 0.7) / np.sqrt(np.pi / 2)
    image *= speckle
    image = np.clip(image / np.percentile(image[field], 99.5) * 230.0, 0, 255)
    return np.where(field, np.rint(image), 0).astype(np.uint8)


def make_us_case(name: str, seed: int, shape: tuple[int, int, int] = US_SHAPE) -> SampleCase:
    """A us2mr case: the ultrasound and, inside its field of view, the registered T2w and FLAIR (+ labels)."""
    rng = np.random.default_rng(seed)
    tissue, seg = region_tissues(rng, shape)
    field = fan(shape, rng)
    images = {"us": render_us(tissue, field, rng)}
    for modality in US2MR.modalities[1:]:
        images[modality] = np.where(field, render(tissue, modality, rng), 0).astype(np.int16)
    return SampleCase(name, images, np.where(field, seg, 0).astype(np.uint8), US_AFFINE)
