"""Synthetic (image, tumour mask) pairs from a latent-diffusion bundle (document 001): `python -m infer.augment`.

A bundle is the folder the `ldm` trainer writes (`run.bundle`): `mask/` + `mask-autoencoder/` (the mask
generator), `image/` + `image-autoencoder/` (the mask-conditioned image generator) and, for the one-step model,
`joint/` + `joint-autoencoder/`. Two-step sampling draws a mask latent, decodes it into a mask (decoded value >
0), then draws an image latent conditioned on that mask with classifier-free guidance omega (eq. 3; MONAI's
`cfg` = 1 + omega); one-step sampling decodes image and mask from one latent. Both run deterministic DDIM over
`--steps` of the T = 1000 timesteps (MONAI `LatentDiffusionInferer.sample`). Pair i draws its noise from its own
seed, `pair_seed(seed, i)`, so a pair depends on (--seed, i) and the weights only, not on the batch size.

Output, in the BraTS 2023 layout: `OUT/<prefix>-<i>-000/<case>-<modality>.nii.gz` (the image, denormalised:
background 0) and `<case>-seg.nii.gz` (the whole-tumour mask as label 1), one axial slice each, in-plane spacing
240 / size mm (the slices were resized from 240 x 240), and `OUT/augment.json`: the weights, mode, seed,
guidance, steps and each case's seed.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import LatentDiffusionInferer
from tqdm.auto import tqdm

from conventions.naming import BRATS_2023, SEGMENTATION
from conventions.normalization import Normalization, ScaleNorm, norm_from_json, norm_to_json
from infer.engine.intensity import denormalize
from models.checkpoint import CheckpointError, load_model
from models.ldm import NULL_MASK, SIZE_KEY, KLAutoencoder, LatentDenoiser, monai_cfg

MODES: tuple[str, ...] = ("two-step", "one-step")
SOURCE_SIDE: int = 240
"""The in-plane side (mm, at 1 mm) of the BraTS slices the models were trained on, resized to their size."""
TUMOUR_LABEL: int = 1
"""The label the written masks carry (every label is whole tumour)."""
RECORD_FILE = "augment.json"


def resize_pairs(images: torch.Tensor, masks: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, H, W) images (antialiased bilinear, kept in [-1, 1]) and {0, 1} masks (bilinear > 0.5) resized to
    `size` x `size`."""
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    m = F.interpolate(masks.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(-1, 1), (m > 0.5).float()


@dataclass
class LatentModel:
    """A denoiser and the autoencoder of its latents."""

    denoiser: LatentDenoiser
    autoencoder: KLAutoencoder

    @property
    def size(self) -> int:
        """The side of the slices it generates (recorded by its trainer)."""
        return int(self.denoiser.meta.provenance[SIZE_KEY])

    def latent_shape(self) -> tuple[int, int, int]:
        side = self.size // self.autoencoder.config.downsampling
        return self.autoencoder.config.latent_channels, side, side

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, steps: int, mask: torch.Tensor | None = None, omega: float = 0.0
               ) -> torch.Tensor:
        """Decode DDIM samples from `noise` (B, *latent_shape); with a {0, 1} `mask` (B, 1, size, size) for a
        conditional denoiser, guided by `omega`."""
        scheduler = self.denoiser.sampling_scheduler(steps)
        inferer = LatentDiffusionInferer(scheduler, scale_factor=float(self.denoiser.scale_factor))
        guided = mask is not None and omega != 0
        return inferer.sample(input_noise=noise, autoencoder_model=self.autoencoder, diffusion_model=self.denoiser,
                              scheduler=scheduler, conditioning=mask, mode="crossattn", verbose=False,
                              cfg=monai_cfg(omega) if guided else None, cfg_fill_value=NULL_MASK)


def load_latent_model(bundle: Path, name: str, device: torch.device) -> LatentModel:
    """`bundle/name` and `bundle/name-autoencoder`."""
    denoiser = load_model(bundle / name, device, kind="ldm_denoiser")
    autoencoder = load_model(bundle / f"{name}-autoencoder", device, kind="ldm_autoencoder")
    if autoencoder.config.latent_channels != denoiser.config.latent_channels:
        raise CheckpointError(f"{bundle}: {name} denoises {denoiser.config.latent_channels} latent channels, its "
                              f"autoencoder makes {autoencoder.config.latent_channels}")
    if SIZE_KEY not in denoiser.meta.provenance:
        raise CheckpointError(f"{bundle / name}: the provenance does not record the slice size ({SIZE_KEY})")
    return LatentModel(denoiser, autoencoder)


@dataclass
class Generator:
    """What a bundle samples: the two-step pair (mask generator, image generator) or the one-step model."""

    mode: str
    mask: LatentModel | None = None
    image: LatentModel | None = None
    joint: LatentModel | None = None

    @property
    def modality(self) -> str:
        return (self.image or self.joint).denoiser.meta.modalities[0]

    @property
    def size(self) -> int:
        return (self.image or self.joint).size


def load_generator(bundle: str | Path, mode: str | None, device: torch.device) -> Generator:
    """The bundle's two-step models (`mode` "two-step", the default when it has them) or its one-step one."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise CheckpointError(f"{bundle}: no such folder")
    two_step = (bundle / "mask").is_dir() and (bundle / "image").is_dir()
    mode = mode or ("two-step" if two_step else "one-step")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "one-step":
        return Generator(mode, joint=load_latent_model(bundle, "joint", device))
    mask, image = load_latent_model(bundle, "mask", device), load_latent_model(bundle, "image", device)
    if not image.denoiser.config.conditional or mask.denoiser.config.conditional:
        raise CheckpointError(f"{bundle}: image/ must be mask-conditioned and mask/ unconditional")
    if mask.size != image.size:
        raise CheckpointError(f"{bundle}: the mask generator makes {mask.size}-pixel slices, the image "
                              f"generator {image.size}-pixel ones")
    return Generator(mode, mask=mask, image=image)


def pair_seed(seed: int, index: int) -> int:
    """The seed of pair `index` of a run seeded `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _noise(seeds: Sequence[int], shape: tuple[int, ...], draw: int, device: torch.device) -> torch.Tensor:
    """Draw number `draw` of each pair's generator (0: the first latent, 1: the second)."""
    out = []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        for _ in range(draw):
            torch.randn(shape, generator=g)
        out.append(torch.randn(shape, generator=g))
    return torch.stack(out).to(device)


@torch.no_grad()
def generate(generator: Generator, seeds: Sequence[int], steps: int, omega: float, device: torch.device,
             masks: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, 1, S, S) in [-1, 1], masks (B, 1, S, S) {0, 1}) of pairs seeded `seeds`. Two-step: the
    masks are sampled, unless `masks` ({0, 1}, on the image generator's grid) are given to condition on."""
    if generator.mode == "one-step":
        if masks is not None:
            raise ValueError("the one-step model is not conditioned on masks")
        model = generator.joint
        decoded = model.sample(_noise(seeds, model.latent_shape(), 0, device), steps)
        return decoded[:, :1].clamp(-1, 1), (decoded[:, 1:2] > 0).float()
    if masks is None:
        model = generator.mask
        masks = (model.sample(_noise(seeds, model.latent_shape(), 0, device), steps) > 0).float()
    model = generator.image
    images = model.sample(_noise(seeds, model.latent_shape(), 1, device), steps, masks.to(device), omega)
    return images.clamp(-1, 1), masks.to(device)


def case_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:05d}-000"


def write_pair(folder: Path, case: str, modality: str, image: np.ndarray, mask: np.ndarray, norm: Normalization,
               size: int) -> None:
    """One case folder: the denormalised image (background 0) and the mask, as (S, S, 1) NIfTI."""
    case_dir = folder / case
    case_dir.mkdir(parents=True, exist_ok=True)
    spacing = SOURCE_SIDE / size
    affine = np.diag([spacing, spacing, 1.0, 1.0])
    values = np.where(image > -1, denormalize(image, norm), 0.0).astype(np.float32)
    nib.save(nib.Nifti1Image(values[:, :, None], affine), case_dir / BRATS_2023.file_name(case, modality))
    nib.save(nib.Nifti1Image((mask > 0).astype(np.uint8)[:, :, None] * TUMOUR_LABEL, affine),
             case_dir / BRATS_2023.file_name(case, SEGMENTATION))


def read_pairs(folder: str | Path, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` (default all) pairs an `augment` run wrote to `folder`, back in the models' units:
    (N, 1, S, S) images (the written [0, output_high] mapped back to [-1, 1]) and {0, 1} masks."""
    folder = Path(folder)
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
        norm = norm_from_json(record["normalization"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{folder}: not the output of python -m infer.augment ({type(err).__name__}: {err})") \
            from None
    if not isinstance(norm, ScaleNorm):
        raise ValueError(f"{folder}: images written in a {type(norm).__name__} cannot be read back")
    cases = record["cases"] if count is None else record["cases"][:count]
    if count is not None and len(cases) < count:
        raise ValueError(f"{folder} holds {len(cases)} pairs, {count} are needed")
    images, masks = [], []
    for entry in cases:
        case = entry["case"]
        images.append(nib.load(folder / case / BRATS_2023.file_name(case, record["modality"])).get_fdata()[..., 0])
        masks.append(np.asarray(nib.load(folder / case / BRATS_2023.file_name(case, SEGMENTATION)).dataobj)[..., 0])
    x = torch.from_numpy(np.stack(images).astype(np.float32))[:, None] * (2 / norm.output_high) - 1
    return x.clamp(-1, 1), torch.from_numpy((np.stack(masks) > 0).astype(np.float32))[:, None]


def augment(weights: str | Path, count: int, output: str | Path, omega: float = 3.0, seed: int = 0, steps: int = 50,
            batch_size: int = 8, mode: str | None = None, device: torch.device = torch.device("cpu"),
            prefix: str = "BraTS-SYN", progress: bool = True) -> dict:
    """Write `count` pairs to `output` (module docstring); returns the record written to augment.json."""
    output = Path(output)
    if (output / RECORD_FILE).exists():
        raise FileExistsError(f"{output / RECORD_FILE} exists: {output} holds synthetic pairs already")
    if count < 1 or steps < 1 or batch_size < 1:
        raise ValueError("--count, --steps and --batch-size must be at least 1")
    generator = load_generator(weights, mode, device)
    lead = generator.image or generator.joint
    norm = lead.denoiser.meta.normalization[generator.modality]
    seeds = [pair_seed(seed, i) for i in range(count)]
    cases = []
    with tqdm(total=count, desc=f"{generator.mode} pairs", unit="pair", disable=not progress) as bar:
        for start in range(0, count, batch_size):
            batch = seeds[start:start + batch_size]
            images, masks = generate(generator, batch, steps, omega, device)
            for k, (image, mask) in enumerate(zip(images[:, 0].cpu().numpy(), masks[:, 0].cpu().numpy())):
                name = case_name(prefix, start + k)
                write_pair(output, name, generator.modality, image, mask, norm, generator.size)
                cases.append({"case": name, "seed": batch[k], "tumour_pixels": int(mask.sum())})
            bar.update(len(batch))
    record = {"weights": str(weights), "mode": generator.mode, "seed": seed,
              "guidance": omega if generator.mode == "two-step" else None, "steps": steps, "count": count,
              "modality": generator.modality, "size": generator.size, "spacing_mm": SOURCE_SIDE / generator.size,
              "normalization": norm_to_json(norm), "segmentation": f"whole tumour as label {TUMOUR_LABEL}",
              "cases": cases}
    (output / RECORD_FILE).write_text(json.dumps(record, indent=1))
    return record


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m infer.augment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="latent-diffusion bundle (the ldm trainer's run.bundle)")
    p.add_argument("--count", type=int, required=True, help="number of (image, mask) pairs")
    p.add_argument("--output", required=True, help="folder for the cases (BraTS 2023 layout)")
    p.add_argument("--guidance", type=float, default=3.0,
                   help="classifier-free guidance weight omega (eq. 3; the paper's grid: 3, 5, 7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mode", choices=MODES, help="two-step (default when the bundle has it) or one-step")
    p.add_argument("--prefix", default="BraTS-SYN", help="case name prefix")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    try:
        record = augment(args.weights, args.count, args.output, args.guidance, args.seed, args.steps,
                         args.batch_size, args.mode, device, args.prefix)
    except (CheckpointError, ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {record['count']} {record['mode']} pairs to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
