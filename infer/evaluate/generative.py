"""Evaluation of synthetic (image, tumour mask) pairs (document 001, section 3.5): `python -m
infer.evaluate.generative`.

- Image quality: FID and KID (unbiased MMD^2 with the cubic polynomial kernel) between the features of real and
  generated images, from a feature network the user gives: a TorchScript file mapping (B, 3, H, W) images in
  [0, 1] (grey repeated) to (B, F) features, or to feature maps that are averaged over space (the paper uses
  InceptionV3 at 299 x 299). Without one, both are reported as not computed.
- Morphological fidelity: Dice and HD95 between each non-empty conditioning mask and the mask a slice segmenter
  finds in the image generated from it, beside the same scores with the masks shuffled between images (a derangement:
  the chance level) and, for reference, the segmenter on real pairs; for the two-step framework also the image
  generator alone, conditioned on real validation masks. The segmenter is a `segmenter` checkpoint
  (`models.segmenter`, e.g. the bundled weights/slice-segmenter): the image goes into its channel of the
  generated modality, every other input channel is background, and it sees the slice at the size it was
  trained at.
- The mask generator's size-shape relation (Tables 3-4): tumour size (share of the slice) and Energy Spectral
  Distance (ESD: the mean energy |F_f|^2 of the Fourier components of |d - mean d|, d the distances of the mask's
  boundary pixels to its centroid in angular order), the linear fit log ESD = b0 + b1 log size of real and
  generated masks with a t-test of the slopes, and Wilcoxon rank-sum tests of size and ESD.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from scipy.ndimage import binary_erosion
from tqdm.auto import tqdm

from conventions.naming import SEGMENTATION
from conventions.normalization import Normalization
from conventions.regions import region_mask
from conventions.tasks import BRASYN, TaskSpec
from infer.augment import SOURCE_SIDE, Generator, generate, load_generator, pair_seed, resize_pairs
from infer.engine.cases import case_naming, discover_cases, load_volume, read_split
from infer.engine.intensity import normalize
from infer.evaluate.segmetrics import mask_scores
from models.checkpoint import CheckpointError, load_model
from models.ldm import SIZE_KEY

NOT_COMPUTED = "not computed"
MIN_SHAPES: int = 4
"""Masks each set needs for the size-shape fits (a slope and its standard error need more than three)."""


# ------------------------------------------------------------------------------------------- image quality


def load_feature_network(path: str | Path | None, device: torch.device) -> torch.nn.Module | None:
    """The TorchScript feature network at `path` (None when no path is given or nothing is there)."""
    if not path or not Path(path).is_file():
        return None
    return torch.jit.load(str(path), map_location=device).eval()


@torch.no_grad()
def image_features(network: torch.nn.Module, images: torch.Tensor, size: int, batch_size: int = 32) -> torch.Tensor:
    """(N, F) float64 features of (N, 1, H, W) images in [-1, 1], resized to `size` and given as RGB in [0, 1]."""
    device = next(iter(network.parameters()), torch.empty(0)).device
    out = []
    for start in range(0, len(images), batch_size):
        x = (images[start:start + batch_size].float().to(device) + 1) / 2
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
        f = network(x)
        out.append((f.flatten(2).mean(2) if f.ndim > 2 else f).double().cpu())
    return torch.cat(out)


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two (N, F) feature sets (MONAI `FIDMetric`)."""
    from monai.metrics import FIDMetric

    return float(FIDMetric()(fake, real))


def kid(real: torch.Tensor, fake: torch.Tensor, subset_size: int = 100, subsets: int = 100, seed: int = 0) -> float:
    """Kernel Inception Distance: the mean over `subsets` random subsets of the unbiased MMD^2 with the kernel
    k(x, y) = (x.y / F + 1)^3."""
    n = min(subset_size, len(real), len(fake))
    if n < 2:
        raise ValueError("KID needs at least two real and two generated images")
    rng = np.random.default_rng(seed)
    dim = real.shape[1]
    values = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), n, replace=False)]
        y = fake[rng.choice(len(fake), n, replace=False)]
        kxx, kyy, kxy = ((a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off = 1 - torch.eye(n, dtype=kxx.dtype)
        values.append(float((kxx * off).sum() / (n * (n - 1)) + (kyy * off).sum() / (n * (n - 1))
                            - 2 * kxy.mean()))
    return float(np.mean(values))


def image_quality(real: torch.Tensor, fake: torch.Tensor, network: torch.nn.Module | None, size: int = 299
                  ) -> dict[str, float | str]:
    """FID and KID of (N, 1, H, W) image sets, or "not computed" for both without a feature network."""
    if network is None:
        return {"fid": NOT_COMPUTED, "kid": NOT_COMPUTED, "note": "no feature network given (--features)"}
    real_f, fake_f = image_features(network, real, size), image_features(network, fake, size)
    return {"fid": fid(real_f, fake_f), "kid": kid(real_f, fake_f)}


# -------------------------------------------------------------------------------------- morphological fidelity


@torch.no_grad()
def segmenter_masks(segmenter: torch.nn.Module, images: torch.Tensor, modality: str, region: str = "WT",
                    batch_size: int = 16) -> torch.Tensor:
    """(N, 1, S, S) {0, 1} `region` masks a slice segmenter finds in (N, 1, S, S) images of `modality` (its
    other input channels background), run at the slice size it was trained at (its provenance's size, else
    240 x 240: whole BraTS slices) and resized back."""
    meta = segmenter.meta
    if modality not in meta.modalities:
        raise CheckpointError(f"the segmenter takes {', '.join(meta.modalities)}, not {modality}")
    channel = meta.modalities.index(modality)
    device = next(segmenter.parameters()).device
    size, side = images.shape[-1], int(meta.provenance.get(SIZE_KEY, SOURCE_SIDE))
    out = []
    for start in range(0, len(images), batch_size):
        x = resize_pairs(images[start:start + batch_size], torch.zeros_like(images[start:start + batch_size]),
                         side)[0]
        inputs = torch.stack([x[:, 0] if i == channel else torch.full_like(x[:, 0], meta.normalization[m].background)
                              for i, m in enumerate(meta.modalities)], dim=1)
        labels = segmenter(inputs.to(device)).argmax(1).cpu().numpy()
        masks = torch.from_numpy(region_mask(labels, region).astype(np.float32))[:, None]
        out.append(resize_pairs(torch.zeros_like(masks), masks, size)[1])
    return torch.cat(out)


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A permutation of range(n) that moves every index (n >= 2)."""
    rng = np.random.default_rng(seed)
    return (np.arange(n) + rng.integers(1, n)) % n if n > 1 else np.arange(n)


def _mean_scores(pred: np.ndarray, ref: np.ndarray, spacing: float) -> dict[str, float]:
    scores = [mask_scores(p, r, (spacing, spacing)) for p, r in zip(pred, ref)]
    return {"dice": float(np.mean([s["dice"] for s in scores])), "hd95": float(np.mean([s["hd95"] for s in scores]))}


def morphological_fidelity(conditioning: torch.Tensor, predicted: torch.Tensor, spacing: float = 1.0,
                           seed: int = 0) -> dict[str, float]:
    """Mean Dice and HD95 (mm) of the predicted masks against their conditioning masks, and against the
    conditioning masks of other images (`chance_dice`, `chance_hd95`), over the pairs whose conditioning mask
    is not empty (an empty one would score Dice 1 against an image without tumour); `empty` counts the others.
    A note instead of scores when fewer than two are left."""
    cond = conditioning[:, 0].numpy() > 0.5
    pred = predicted[:, 0].numpy() > 0.5
    kept = cond.reshape(len(cond), -1).any(axis=1)
    cond, pred = cond[kept], pred[kept]
    counts = {"pairs": len(cond), "empty": int((~kept).sum())}
    if len(cond) < 2:
        return {"note": f"{NOT_COMPUTED}: fewer than two non-empty conditioning masks", **counts}
    matched = _mean_scores(pred, cond, spacing)
    chance = _mean_scores(pred, cond[derangement(len(cond), seed)], spacing)
    return {**matched, "chance_dice": chance["dice"], "chance_hd95": chance["hd95"], **counts}


# ------------------------------------------------------------------------------------------------ size-shape


def tumour_size(mask: np.ndarray) -> float:
    """The share of the slice the mask covers."""
    return float(np.mean(mask > 0))


def energy_spectral_distance(mask: np.ndarray) -> float:
    """ESD of a 2D mask (module docstring); NaN for a mask with fewer than 3 boundary pixels."""
    mask = np.asarray(mask) > 0
    boundary = np.argwhere(mask & ~binary_erosion(mask))
    if len(boundary) < 3:
        return math.nan
    centre = np.argwhere(mask).mean(axis=0)
    offsets = boundary - centre
    d = np.hypot(offsets[:, 0], offsets[:, 1])[np.argsort(np.arctan2(offsets[:, 0], offsets[:, 1]))]
    return float(np.mean(np.abs(np.fft.fft(np.abs(d - d.mean()))) ** 2))


def size_and_esd(masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Tumour size and ESD of each non-empty mask (ESD NaN where the boundary has fewer than 3 pixels)."""
    kept = [m for m in masks if m.any()]
    return np.array([tumour_size(m) for m in kept]), np.array([energy_spectral_distance(m) for m in kept])


def size_shape_fit(size: np.ndarray, esd: np.ndarray) -> dict[str, float]:
    """The least-squares fit log ESD = b0 + b1 log size over the masks with a positive ESD (`size_and_esd`): b0,
    b1, the standard error of b1 and the number of masks."""
    size, esd = size[esd > 0], esd[esd > 0]
    (b1, b0), cov = np.polyfit(np.log(size), np.log(esd), 1, cov=True)
    return {"beta0": float(b0), "beta1": float(b1), "beta1_se": float(math.sqrt(cov[0, 0])), "n": len(size)}


def compare_size_shape(real: Sequence[np.ndarray], generated: Sequence[np.ndarray]) -> dict[str, object]:
    """Median size and ESD of each set with Wilcoxon rank-sum p-values, both fits, and the two-sided t-test
    p-value of equal slopes; a note instead when either set has fewer than `MIN_SHAPES` masks with a boundary."""
    sets = {"real": size_and_esd(real), "generated": size_and_esd(generated)}
    counts = {name: int((esd > 0).sum()) for name, (_, esd) in sets.items()}
    if min(counts.values()) < MIN_SHAPES:
        return {"note": f"{NOT_COMPUTED}: {counts['real']} real and {counts['generated']} generated masks with a "
                        f"boundary (at least {MIN_SHAPES} each needed)"}
    out: dict[str, object] = {}
    for k, name in enumerate(("size", "esd")):
        r, g = (values[k][np.isfinite(values[k])] for values in sets.values())
        out[name] = {"real_median": float(np.median(r)), "generated_median": float(np.median(g)),
                     "p": float(stats.ranksums(r, g).pvalue)}
    fit_r, fit_g = (size_shape_fit(*values) for values in sets.values())
    t = (fit_r["beta1"] - fit_g["beta1"]) / math.hypot(fit_r["beta1_se"], fit_g["beta1_se"])
    dof = fit_r["n"] + fit_g["n"] - 4
    return {**out, "real_fit": fit_r, "generated_fit": fit_g, "slope_p": float(2 * stats.t.sf(abs(t), dof))}


# -------------------------------------------------------------------------------------------------- real data


def real_pairs(root: str | Path, names: Sequence[str] | None, modality: str, norm: Normalization, size: int,
               region: str = "WT", min_tumour_fraction: float = 0.001, task: TaskSpec = BRASYN
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The axial (image, `region` mask) slices of the BraTS cases under `root` (those in `names` when given)
    whose tumour covers at least `min_tumour_fraction` of the slice, normalised with `norm` and resized to
    `size`: (N, 1, size, size) images and {0, 1} masks."""
    images, masks = [], []
    cases = [c for c in discover_cases(Path(root), task) if (names is None or c.name in names)
             and modality in c.files]
    for case in tqdm(cases, desc="real slices", unit="case"):
        seg_path = case.files[modality].parent / case_naming(case, task).file_name(case.name, SEGMENTATION)
        if not seg_path.is_file():
            continue
        volume = load_volume(case.name, case.files[modality])[1]
        seg = case_naming(case, task).read_labels(np.asarray(nib.load(seg_path).dataobj))
        image, tumour = normalize(volume, norm), region_mask(seg, region)
        keep = tumour.sum(axis=(0, 1)) >= max(math.ceil(min_tumour_fraction * tumour[..., 0].size), 1)
        images.append(np.moveaxis(image[..., keep], -1, 0))
        masks.append(np.moveaxis(tumour[..., keep], -1, 0))
    if not images or not sum(len(i) for i in images):
        raise ValueError(f"no labelled slice with tumour found under {root}")
    return resize_pairs(torch.from_numpy(np.concatenate(images))[:, None],
                        torch.from_numpy(np.concatenate(masks).astype(np.float32))[:, None], size)


# ---------------------------------------------------------------------------------------------------- command


def generate_all(generator: Generator, seeds: Sequence[int], steps: int, omega: float, device: torch.device,
                 batch_size: int, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`generate` in batches (two-step: conditioned on `masks` when given), on the CPU."""
    images, out_masks = [], []
    for start in tqdm(range(0, len(seeds), batch_size), desc="generating", unit="batch"):
        given = None if masks is None else masks[start:start + batch_size]
        x, m = generate(generator, seeds[start:start + batch_size], steps, omega, device, given)
        images.append(x.cpu())
        out_masks.append(m.cpu())
    return torch.cat(images), torch.cat(out_masks)


def evaluate(generator: Generator, real_images: torch.Tensor, real_masks: torch.Tensor, count: int, seed: int,
             steps: int, omega: float, device: torch.device, segmenter: torch.nn.Module | None,
             features: torch.nn.Module | None, feature_size: int = 299, batch_size: int = 8) -> dict[str, object]:
    """Generate `count` pairs and score them against the real slices (module docstring)."""
    seeds = [pair_seed(seed, i) for i in range(count)]
    images, masks = generate_all(generator, seeds, steps, omega, device, batch_size)
    spacing = SOURCE_SIDE / generator.size
    report: dict[str, object] = {"mode": generator.mode, "count": count, "seed": seed, "steps": steps,
                                 "guidance": omega, "real_slices": len(real_images),
                                 "image_quality": image_quality(real_images, images, features, feature_size)}
    if segmenter is not None:
        report["morphological_fidelity"] = morphological_fidelity(
            masks, segmenter_masks(segmenter, images, generator.modality), spacing, seed)
        report["real_reference"] = morphological_fidelity(
            real_masks, segmenter_masks(segmenter, real_images, generator.modality), spacing, seed)
        if generator.mode == "two-step":
            chosen = real_masks[torch.linspace(0, len(real_masks) - 1, min(count, len(real_masks))).long()]
            painted, _ = generate_all(generator, seeds[:len(chosen)], steps, omega, device, batch_size, chosen)
            report["real_mask_conditioning"] = morphological_fidelity(
                chosen, segmenter_masks(segmenter, painted, generator.modality), spacing, seed)
    report["size_shape"] = compare_size_shape([m[0].numpy() > 0 for m in real_masks],
                                              [m[0].numpy() > 0 for m in masks])
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infer.evaluate.generative", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="latent-diffusion bundle")
    p.add_argument("--real", required=True, help="BraTS-layout folder with labelled cases")
    p.add_argument("--split", help="split JSON: only its validation cases are the real reference")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("two-step", "one-step"))
    p.add_argument("--segmenter", help="slice segmenter checkpoint (e.g. weights/slice-segmenter)")
    p.add_argument("--features", help="TorchScript feature network for FID / KID")
    p.add_argument("--feature-size", type=int, default=299)
    p.add_argument("--output", help="JSON report to write")
    p.add_argument("--device", default="cpu")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    try:
        generator = load_generator(args.weights, args.mode, device)
        lead = generator.image or generator.joint
        names = read_split(args.split)[1] if args.split else None
        real_images, real_masks = real_pairs(args.real, names, generator.modality,
                                             lead.denoiser.meta.normalization[generator.modality], generator.size,
                                             lead.denoiser.meta.provenance.get("region", "WT"))
        segmenter = load_model(args.segmenter, device, kind="segmenter") if args.segmenter else None
        features = load_feature_network(args.features, device)
        if args.features and features is None:
            print(f"note: no feature network at {args.features}; FID and KID not computed", file=sys.stderr)
        report = evaluate(generator, real_images, real_masks, args.count, args.seed, args.steps, args.guidance,
                          device, segmenter, features, args.feature_size)
    except (CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=1)
    if args.output:
        Path(args.output).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
