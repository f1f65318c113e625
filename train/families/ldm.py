"""Training of the mask-guided latent diffusion models (`models.ldm`, document 001, section 3.4).

Data: the axial slices of the training cases whose tumour (`data.region`, whole tumour by default) covers at
least `data.min_tumour_fraction` of the slice; per slice the image (`data.modality`, FLAIR by default, in the
task's per-case scaling: background -1, the 99.5th brain percentile 1) and its tumour mask, both resized to
`data.size` (the paper: 256). Batches are drawn from (seed, step) alone, so `--resume` continues the same
sequence, and augmented on the fly (`data.augment`): rotation within +-`rotation` degrees, translation up to
`translation` of the side, horizontal flip; for images also brightness, contrast and gamma.

`data.domain` says what is modelled: "mask" (the mask generator), "image" (the image generator, conditioned on
the mask) or "joint" (the one-step model: image and mask as two channels of one autoencoder).

`model.stage`:
- "autoencoder": the domain's KL autoencoder; MSE + `loss.perceptual` x perceptual (MONAI `PerceptualLoss`,
  a torchvision ResNet-50 whose weights the user gives in `loss.perceptual_weights`; nothing is downloaded)
  + `loss.adversarial` x PatchGAN (least squares, from step `loss.adversarial_start`) + `loss.kl` x KL.
  Writes `<run.bundle>/<domain>-autoencoder` and `<run.bundle>/<domain>-discriminator`.
- "diffusion": the domain's LDM on the frozen autoencoder's latents (`model.autoencoder`, default the bundle's
  `<domain>-autoencoder`) scaled by 1 / their standard deviation (measured on the first batch of a fresh run):
  eps-prediction MSE at uniform timesteps of the linear beta schedule (0.001..0.02, T = 1000). The image LDM
  drops its mask condition (null mask) with probability `loss.condition_dropout` (0.1, classifier-free
  guidance). Writes `<run.bundle>/<domain>`.
- "downstream": the experiment of section 3.5 for one R (`data.ratio`): a two-class slice segmenter of the
  image trained on the real slices plus R x as many synthetic pairs (`data.synthetic`), scored on the
  validation cases (`fit_downstream`). Writes `<run.bundle>/segmenter-R<R>`.
AdamW at `optim.lr`. The run folder, `<run.output>/<domain>-<stage>` (`downstream-R<R>`), gets `config.yaml`,
`log.csv` + `curves.png` and a resumable `state.pt` every `run.checkpoint_every` steps and when the run stops.
The bundle (`run.bundle`, default `<run.output>/bundle`) is what `python -m infer.augment --weights` samples.
"""
from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from monai.inferers import LatentDiffusionInferer
from monai.losses import DiceCELoss, PatchAdversarialLoss, PerceptualLoss
from torch import nn
from tqdm.auto import tqdm

from conventions.regions import region_mask
from infer.augment import SOURCE_SIDE, read_pairs, resize_pairs
from infer.evaluate.generative import morphological_fidelity
from models.checkpoint import CheckpointMeta, load_model, save_checkpoint
from models.ldm import (SIZE_KEY, AutoencoderConfig, AutoencoderDiscriminator, AutoencoderDiscriminatorConfig,
                        DenoiserConfig, KLAutoencoder, LatentDenoiser, kl_divergence, null_condition)
from models.segmenter import SegmenterConfig, SliceSegmenter
from train.config import ConfigError, VolumeRunConfig
from train.curves import CsvLog, plot_curves
from train.data.cache import CaseSlabs, load_slabs
from train.data.cases import get_task
from train.data.slices import select_slices
from train.distributed import pick_device
from train.run import normalization, now, training_cases
from train.state import Stateful, TrainingClock, restore_training, save_training

STAGES: tuple[str, ...] = ("autoencoder", "diffusion", "downstream")
DOMAINS: tuple[str, ...] = ("mask", "image", "joint")
DOMAIN_CHANNELS: dict[str, int] = {"mask": 1, "image": 1, "joint": 2}
"""Channels of each domain's autoencoder input."""
AUGMENT_SIDE: int = 256
"""The side that `data.translation` (in pixels, the paper's 25) refers to."""


def bundle_folder(cfg: LDMTrainingConfig) -> Path:
    """`run.bundle`, by default `<run.output>/bundle`."""
    return Path(cfg.run.bundle) if cfg.run.bundle else Path(cfg.run.output) / "bundle"


def run_folder(cfg: LDMTrainingConfig) -> Path:
    """The folder of this stage and domain's run (and ratio, downstream)."""
    if cfg.model.stage == "downstream":
        return Path(cfg.run.output) / f"downstream-R{cfg.data.ratio}"
    return Path(cfg.run.output) / f"{cfg.data.domain}-{cfg.model.stage}"


def autoencoder_folder(domain: str) -> str:
    """The folder of a domain's autoencoder in a bundle."""
    return f"{domain}-autoencoder"


def bundle_entry(cfg: LDMTrainingConfig) -> Path:
    """The checkpoint folder this stage writes into the bundle: `<domain>-autoencoder`, `<domain>` (the LDM) or
    `segmenter-R<ratio>`."""
    if cfg.model.stage == "downstream":
        return bundle_folder(cfg) / f"segmenter-R{cfg.data.ratio}"
    domain = cfg.data.domain
    return bundle_folder(cfg) / (autoencoder_folder(domain) if cfg.model.stage == "autoencoder" else domain)


@dataclass
class LDMData:
    """roots, task, normalization, stats, split, val_cases, val_fraction, split_seed, require_seg: as in
    `train.config.DataConfig`. modality: the image modality; region: the tumour region of the mask; domain:
    "mask", "image" or "joint"; size: side of the square slices; min_tumour_fraction: least share of the
    240x240 slice the tumour covers; cache_dir: the shared slice cache (`train.data.cache`). augment: on-the-fly
    augmentation with `rotation` (degrees), `translation` (pixels at a side of 256) and `flip`; `intensity`:
    brightness, contrast and gamma of images. synthetic, ratio: the downstream stage adds `ratio` x as many
    synthetic pairs (the first ones of `synthetic`, a `python -m infer.augment` output) as there are real
    slices."""

    roots: list[str] = field(default_factory=list)
    task: str = "brasyn"
    normalization: str = "case"
    stats: str | None = None
    split: str | None = None
    val_cases: list[str] = field(default_factory=list)
    val_fraction: float = 0.0
    split_seed: int = 0
    require_seg: bool = True
    modality: str = "t2f"
    region: str = "WT"
    domain: str = "image"
    size: int = 256
    min_tumour_fraction: float = 0.001
    cache_dir: str | None = None
    augment: bool = True
    rotation: float = 30.0
    translation: float = 25.0
    flip: bool = True
    intensity: bool = True
    synthetic: str | None = None
    ratio: int = 0


@dataclass
class LDMModel:
    """stage: "autoencoder" or "diffusion". autoencoder / discriminator / denoiser: keyword arguments of
    `AutoencoderConfig` / `AutoencoderDiscriminatorConfig` / `DenoiserConfig` (in_channels, latent_channels,
    mask_downsampling and condition_channels follow from the domain and the autoencoder). condition_channels:
    the mask embedding's channels of the image LDM (the others are unconditional). autoencoder_path: the frozen
    autoencoder of the diffusion stage (default: the bundle's `<domain>-autoencoder`). segmenter: keyword
    arguments of `models.segmenter.SegmenterConfig` for the downstream stage (one input, two classes)."""

    family: str = "ldm"
    stage: str = "autoencoder"
    autoencoder: dict = field(default_factory=dict)
    discriminator: dict = field(default_factory=dict)
    denoiser: dict = field(default_factory=dict)
    condition_channels: int = 4
    autoencoder_path: str | None = None
    segmenter: dict = field(default_factory=dict)


@dataclass
class LDMLoss:
    """Autoencoder: mse, perceptual (needs perceptual_weights, a torchvision ResNet-50 state dict file),
    adversarial (from step adversarial_start) and kl weights (the paper: all 1 but KL, 1e-6). Diffusion:
    condition_dropout, the probability of the null mask for the image LDM."""

    mse: float = 1.0
    perceptual: float = 0.0
    perceptual_weights: str | None = None
    adversarial: float = 1.0
    adversarial_start: int = 0
    kl: float = 1e-6
    condition_dropout: float = 0.1


@dataclass
class LDMOptim:
    """AdamW for every network (the discriminator too) at a constant `lr` (the paper: 1e-4 for the autoencoders,
    1e-5 for the LDMs)."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01


@dataclass
class LDMTrain:
    batch_size: int = 4
    steps: int = 10000
    seed: int = 0


@dataclass
class LDMRun(VolumeRunConfig):
    """`VolumeRunConfig` where output is the folder of every stage and domain (each run in
    `<output>/<domain>-<stage>`: log, curves, resumable state), plus bundle: where final checkpoints go (default
    `<output>/bundle`; `python -m infer.augment --weights` reads it)."""

    output: str = "runs/ldm"
    checkpoint_every: int = 500
    bundle: str | None = None


@dataclass
class LDMTrainingConfig:
    """A latent-diffusion training configuration (`python -m train fit`, `model.family: ldm`)."""

    data: LDMData = field(default_factory=LDMData)
    model: LDMModel = field(default_factory=LDMModel)
    loss: LDMLoss = field(default_factory=LDMLoss)
    optim: LDMOptim = field(default_factory=LDMOptim)
    train: LDMTrain = field(default_factory=LDMTrain)
    run: LDMRun = field(default_factory=LDMRun)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------- data


def slice_pairs(slabs: list[CaseSlabs], modality: int, region: str, size: int, min_tumour_pixels: int,
                fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, size, size) float32 in the normalised units, `fill` the background, masks (N, 1, size,
    size) {0, 1}) of the slices of `slabs` with at least `min_tumour_pixels` tumour pixels (any label)."""
    items = select_slices(slabs, 0, max(min_tumour_pixels, 1))
    if len(items) == 0:
        raise ValueError(f"no slice has {min_tumour_pixels} tumour pixels or more")
    images, masks = [], []
    for slab_index, slice_index in items:
        image, seg = slabs[slab_index].full_slices(int(slice_index), 0, fill)
        images.append(image[modality])
        masks.append(region_mask(seg, region))
    return resize_pairs(torch.from_numpy(np.stack(images))[:, None],
                        torch.from_numpy(np.stack(masks).astype(np.float32))[:, None], size)


def augment_batch(images: torch.Tensor, masks: torch.Tensor, data: LDMData, rng: np.random.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random rotation, translation and flip per sample, the same for image and mask (bilinear and
    nearest), then brightness, contrast and gamma of the image's foreground (section 3.4)."""
    n, size = images.shape[0], images.shape[-1]
    angle = np.deg2rad(rng.uniform(-data.rotation, data.rotation, n))
    shift = rng.uniform(-1, 1, (n, 2)) * 2 * data.translation / AUGMENT_SIDE
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0) if data.flip else np.ones(n)
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0], theta[:, 0, 1] = np.cos(angle) * flip, -np.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = np.sin(angle) * flip, np.cos(angle)
    theta[:, :, 2] = shift
    grid = F.affine_grid(torch.from_numpy(theta).float(), [n, 1, size, size], align_corners=False)
    images = F.grid_sample(images + 1, grid, mode="bilinear", align_corners=False) - 1  # background stays -1
    masks = F.grid_sample(masks, grid, mode="nearest", align_corners=False)
    if data.intensity:
        brain = images > -1
        x = (images + 1) / 2
        gamma = torch.from_numpy(rng.uniform(0.7, 1.5, n)).float().view(n, 1, 1, 1)
        contrast = torch.from_numpy(rng.uniform(0.75, 1.25, n)).float().view(n, 1, 1, 1)
        brightness = torch.from_numpy(rng.uniform(-0.1, 0.1, n)).float().view(n, 1, 1, 1)
        x = x.clamp_min(0).pow(gamma)
        mean = (x * brain).flatten(1).sum(1).view(n, 1, 1, 1) / brain.flatten(1).sum(1).clamp_min(1).view(n, 1, 1, 1)
        x = ((x - mean) * contrast + mean + brightness).clamp(0, 1)
        images = torch.where(brain, 2 * x - 1, images)
    return images, masks


def domain_inputs(domain: str, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """What the domain's autoencoder encodes: the mask as 2 m - 1, the image, or both as two channels."""
    if domain == "mask":
        return 2 * masks - 1
    if domain == "image":
        return images
    return torch.cat([images, 2 * masks - 1], dim=1)


def sample_batch(images: torch.Tensor, masks: torch.Tensor, cfg: LDMTrainingConfig, step: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The (augmented) images and masks of `step`, a function of (seed, step) alone."""
    rng = np.random.default_rng([cfg.train.seed, step])
    index = torch.from_numpy(rng.integers(len(images), size=cfg.train.batch_size))
    x, m = images[index].float(), masks[index].float()
    return augment_batch(x, m, cfg.data, rng) if cfg.data.augment else (x, m)


# ---------------------------------------------------------------------------------------------------- steps


@dataclass
class AutoencoderLosses:
    """The autoencoder's weighted terms (module docstring); `perceptual` None when its weight is 0."""

    weights: LDMLoss
    perceptual: nn.Module | None
    adversarial: PatchAdversarialLoss = field(default_factory=lambda: PatchAdversarialLoss(criterion="least_squares"))


def autoencoder_step(ae: KLAutoencoder, disc: AutoencoderDiscriminator, opt_g: torch.optim.Optimizer,
                     opt_d: torch.optim.Optimizer, x: torch.Tensor, losses: AutoencoderLosses, adversarial: bool
                     ) -> dict[str, float]:
    """One step of the autoencoder, then (when `adversarial`) one of the discriminator; every term's value (the
    adversarial ones NaN when off)."""
    w = losses.weights
    recon, mu, sigma = ae(x)
    terms = {"mse": F.mse_loss(recon, x), "kl": kl_divergence(mu, sigma)}
    if losses.perceptual is not None:
        terms["perceptual"] = losses.perceptual(recon, x)
    if adversarial:
        disc.requires_grad_(False)
        terms["adv"] = losses.adversarial(disc(recon), target_is_real=True, for_discriminator=False)
        disc.requires_grad_(True)
    weights = {"mse": w.mse, "kl": w.kl, "perceptual": w.perceptual, "adv": w.adversarial}
    total = sum(weights[k] * v for k, v in terms.items())
    opt_g.zero_grad(set_to_none=True)
    total.backward()
    opt_g.step()
    logs = {"adv": math.nan, "d": math.nan} | {k: float(v.detach()) for k, v in terms.items()}
    logs["total"] = float(total.detach())
    if adversarial:
        d_loss = 0.5 * (losses.adversarial(disc(recon.detach()), target_is_real=False, for_discriminator=True)
                        + losses.adversarial(disc(x), target_is_real=True, for_discriminator=True))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        logs["d"] = float(d_loss.detach())
    return logs


def drop_condition(masks: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Each sample's mask replaced by the null mask with `probability` (classifier-free guidance training)."""
    keep = torch.rand(masks.shape[0], generator=generator) >= probability
    return torch.where(keep.view(-1, 1, 1, 1).to(masks.device), masks, null_condition(masks))


def diffusion_step(denoiser: LatentDenoiser, ae: KLAutoencoder, inferer: LatentDiffusionInferer,
                   opt: torch.optim.Optimizer, x: torch.Tensor, condition: torch.Tensor | None,
                   generator: torch.Generator) -> dict[str, float]:
    """One eps-prediction step (eq. 1, 2) at uniform timesteps; noise and timesteps from `generator`."""
    with torch.no_grad():
        latent_shape = ae.encode_stage_2_inputs(x[:1]).shape[1:]
    noise = torch.randn((x.shape[0], *latent_shape), generator=generator).to(x.device)
    t = torch.randint(0, denoiser.config.timesteps, (x.shape[0],), generator=generator).to(x.device)
    pred = inferer(inputs=x, autoencoder_model=ae, diffusion_model=denoiser, noise=noise, timesteps=t,
                   condition=condition, mode="crossattn")
    loss = F.mse_loss(pred.float(), noise.float())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"total": float(loss.detach())}


@torch.no_grad()
def latent_scale(ae: KLAutoencoder, x: torch.Tensor) -> float:
    """1 / the standard deviation of the latents of `x` (the LDM's scale factor)."""
    return 1.0 / float(ae.encode_stage_2_inputs(x).std())


# ------------------------------------------------------------------------------------------------------ fit


def _check(cfg: LDMTrainingConfig) -> None:
    if cfg.model.stage not in STAGES:
        raise ConfigError(f"model.stage must be one of {', '.join(STAGES)}, got {cfg.model.stage!r}")
    if cfg.data.domain not in DOMAINS:
        raise ConfigError(f"data.domain must be one of {', '.join(DOMAINS)}, got {cfg.data.domain!r}")
    if cfg.model.stage == "autoencoder" and cfg.loss.perceptual and not cfg.loss.perceptual_weights:
        raise ConfigError("loss.perceptual > 0 needs loss.perceptual_weights (a torchvision ResNet-50 state dict "
                          "file); set loss.perceptual: 0 to train without the perceptual term")
    if cfg.data.normalization != "case":
        raise ConfigError("data.normalization must be case (images in [-1, 1], background -1)")
    if not 0 <= cfg.loss.condition_dropout < 1:
        raise ConfigError(f"loss.condition_dropout must be in [0, 1), got {cfg.loss.condition_dropout}")


def build_autoencoder(cfg: LDMTrainingConfig) -> tuple[KLAutoencoder, AutoencoderDiscriminator]:
    channels = DOMAIN_CHANNELS[cfg.data.domain]
    try:
        ae = KLAutoencoder(AutoencoderConfig(**{**cfg.model.autoencoder, "in_channels": channels}))
        disc = AutoencoderDiscriminator(AutoencoderDiscriminatorConfig(**{**cfg.model.discriminator,
                                                                          "in_channels": channels}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model: {err}") from None
    if cfg.data.size % ae.config.downsampling:
        raise ConfigError(f"data.size {cfg.data.size} must be a multiple of the autoencoder's downsampling "
                          f"{ae.config.downsampling}")
    return ae, disc


def load_autoencoder(cfg: LDMTrainingConfig, device: torch.device) -> KLAutoencoder:
    """The frozen autoencoder of the diffusion stage, checked against the domain and `data.size`."""
    path = cfg.model.autoencoder_path or bundle_folder(cfg) / autoencoder_folder(cfg.data.domain)
    ae = load_model(path, device, kind="ldm_autoencoder").requires_grad_(False)
    if ae.config.in_channels != DOMAIN_CHANNELS[cfg.data.domain]:
        raise ConfigError(f"{path} takes {ae.config.in_channels} channel(s); a {cfg.data.domain} autoencoder "
                          f"takes {DOMAIN_CHANNELS[cfg.data.domain]}")
    if cfg.data.size % ae.config.downsampling:
        raise ConfigError(f"data.size {cfg.data.size} must be a multiple of the autoencoder's downsampling "
                          f"{ae.config.downsampling}")
    return ae


def build_denoiser(cfg: LDMTrainingConfig, ae: KLAutoencoder) -> LatentDenoiser:
    """The domain's denoiser: mask-conditioned (`model.condition_channels`) for images, else unconditional."""
    if cfg.data.domain == "image" and cfg.model.condition_channels < 1:
        raise ConfigError("the image LDM is mask-conditioned: model.condition_channels must be > 0")
    arch = {**cfg.model.denoiser, "latent_channels": ae.config.latent_channels,
            "mask_downsampling": ae.config.downsampling,
            "condition_channels": cfg.model.condition_channels if cfg.data.domain == "image" else 0}
    try:
        return LatentDenoiser(DenoiserConfig(**arch))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.denoiser: {err}") from None


def _perceptual(cfg: LDMTrainingConfig) -> nn.Module | None:
    if not cfg.loss.perceptual:
        return None
    if not Path(cfg.loss.perceptual_weights).is_file():
        raise FileNotFoundError(f"loss.perceptual_weights: {cfg.loss.perceptual_weights} not found")
    return PerceptualLoss(spatial_dims=2, network_type="resnet50", pretrained=True,
                          pretrained_path=cfg.loss.perceptual_weights).requires_grad_(False)


def _load_data(cfg: LDMTrainingConfig, validation: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor, list[str], dict]:
    """(images, masks, case names, {"task", "norms"}) of the training cases (the validation cases when
    `validation`)."""
    task = get_task(cfg.data.task)
    if cfg.data.modality not in task.modalities:
        raise ConfigError(f"data.modality: task {task.name} has {', '.join(task.modalities)}, "
                          f"not {cfg.data.modality!r}")
    norms = normalization(cfg, task)
    cases = training_cases(cfg, task)[1 if validation else 0]
    if not cases:
        raise ConfigError("no validation case (data.split, data.val_cases or data.val_fraction)")
    slabs = load_slabs(cases, task.modalities, norms, ["axial"], cfg.data.cache_dir, progress=cfg.run.progress)
    side = max(s.shape[1] for s in slabs)
    images, masks = slice_pairs(slabs, task.modalities.index(cfg.data.modality), cfg.data.region, cfg.data.size,
                                math.ceil(cfg.data.min_tumour_fraction * side * side),
                                norms[cfg.data.modality].background)
    return images, masks, [c.name for c in cases], {"task": task, "norms": norms}


def fit_ldm(cfg: LDMTrainingConfig, resume: bool = False, stop_after: int | None = None) -> Path:
    """Train (or continue training) the configured stage and domain; returns the run folder."""
    _check(cfg)
    if cfg.model.stage == "downstream":
        return fit_downstream(cfg, resume, stop_after)
    clock = TrainingClock(now())
    domain, bundle, final = cfg.data.domain, bundle_folder(cfg), bundle_entry(cfg)
    if final.exists():
        raise FileExistsError(f"{final} exists already; choose another run.bundle")
    out = run_folder(cfg)
    if not resume and (out / "state.pt").exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume or choose another run.output")
    device = pick_device(cfg.run.device, 0)
    torch.manual_seed(cfg.train.seed)
    if cfg.model.stage == "autoencoder":
        (ae, disc), denoiser = build_autoencoder(cfg), None
    else:
        ae, disc = load_autoencoder(cfg, device), None
        denoiser = build_denoiser(cfg, ae)
    perceptual = _perceptual(cfg) if cfg.model.stage == "autoencoder" else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    images, masks, case_names, data = _load_data(cfg)

    trained = [ae, disc] if denoiser is None else [denoiser]
    for net in trained:
        net.to(device).train()
    opts = [torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                              weight_decay=cfg.optim.weight_decay) for net in trained]
    parts: dict[str, Stateful] = {}
    for net, opt, key in zip(trained, opts, ("model", "discriminator")):
        parts |= {key: net, f"optimizer_{key}": opt}
    step = 0
    if resume:
        step = restore_training(out, parts, cfg.to_dict(), len(images), clock)
    elif denoiser is not None:
        first = domain_inputs(domain, *sample_batch(images, masks, cfg, 0)).to(device)
        denoiser.scale_factor.fill_(latent_scale(ae, first))
    log = CsvLog(out / "log.csv", step if resume else None)
    stop = min(cfg.train.steps, stop_after) if stop_after is not None else cfg.train.steps
    losses = AutoencoderLosses(cfg.loss, perceptual.to(device) if perceptual is not None else None)
    inferer = None if denoiser is None else LatentDiffusionInferer(denoiser.training_scheduler(),
                                                                   float(denoiser.scale_factor))

    def checkpoint() -> None:
        save_training(out, parts, step, cfg.to_dict(), len(images), clock)
        plot_curves(out / "log.csv", out / "curves.png")

    with tqdm(total=stop, initial=step, desc=f"ldm {cfg.model.stage} {domain}", unit="step",
              disable=not cfg.run.progress) as bar:
        while step < stop:
            x, m = sample_batch(images, masks, cfg, step)
            inputs = domain_inputs(domain, x, m).to(device)
            if denoiser is None:
                logs = autoencoder_step(ae, disc, opts[0], opts[1], inputs, losses,
                                        cfg.loss.adversarial > 0 and step >= cfg.loss.adversarial_start)
            else:
                generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
                condition = drop_condition(m, cfg.loss.condition_dropout, generator).to(device) \
                    if denoiser.config.conditional else None
                logs = diffusion_step(denoiser, ae, inferer, opts[0], inputs, condition, generator)
            step += 1
            log.append({"step": step, **logs})
            bar.update()
            bar.set_postfix(loss=f"{logs['total']:.4f}")
            if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0 and step < stop:
                checkpoint()
    checkpoint()
    if step == cfg.train.steps:
        prov = {"config": cfg.to_dict(), "steps": step, "train_cases": case_names, "train_slices": len(images),
                "domain": domain, "modality": cfg.data.modality, "region": cfg.data.region, SIZE_KEY: cfg.data.size,
                "perceptual": bool(losses.perceptual),
                "time": {**clock.to_state(), "finished": now()},
                "software": {"torch": torch.__version__, "python": platform.python_version()}}
        task = data["task"]
        meta = CheckpointMeta(kind="ldm_autoencoder", task=task.name, modalities=(cfg.data.modality,),
                              normalization={cfg.data.modality: data["norms"][cfg.data.modality]},
                              views=("axial",), provenance=prov)
        if denoiser is None:
            save_checkpoint(ae, final, meta)
            save_checkpoint(disc, bundle / f"{domain}-discriminator", replace(meta, kind="ldm_discriminator"))
        else:
            save_checkpoint(denoiser, final, replace(meta, kind="ldm_denoiser"))
    return out


# ----------------------------------------------------------------------------------------------- downstream


def downstream_pairs(cfg: LDMTrainingConfig, images: torch.Tensor, masks: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The real pairs followed by `data.ratio` x as many synthetic ones, and the number of synthetic pairs."""
    if cfg.data.ratio < 0:
        raise ConfigError(f"data.ratio must be 0 or more, got {cfg.data.ratio}")
    if not cfg.data.ratio:
        return images, masks, 0
    if not cfg.data.synthetic:
        raise ConfigError("data.ratio > 0 needs data.synthetic (a python -m infer.augment output folder)")
    x, m = read_pairs(cfg.data.synthetic, cfg.data.ratio * len(images))
    if x.shape[-1] != images.shape[-1]:
        x, m = resize_pairs(x, m, images.shape[-1])
    return torch.cat([images, x]), torch.cat([masks, m]), len(x)


@torch.no_grad()
def predicted_masks(model: SliceSegmenter, images: torch.Tensor, device: torch.device, batch_size: int = 32
                    ) -> torch.Tensor:
    """(N, 1, S, S) {0, 1} tumour masks of a two-class segmenter; the model is left in train()."""
    model.eval()
    out = [model(images[i:i + batch_size].to(device)).argmax(1, keepdim=True).float().cpu()
           for i in range(0, len(images), batch_size)]
    model.train()
    return torch.cat(out)


def fit_downstream(cfg: LDMTrainingConfig, resume: bool = False, stop_after: int | None = None) -> Path:
    """The downstream experiment (section 3.5) for one R = `data.ratio`: a two-class slice segmenter of the
    modality (`model.segmenter`, MONAI DynUNet) trained with Dice + cross-entropy on the real training slices
    plus R x as many synthetic pairs, then scored on the validation cases' tumour slices (mean Dice and HD95 per
    slice, `validation.json` in the run folder). Writes `<bundle>/segmenter-R<R>`."""
    clock = TrainingClock(now())
    out, final = run_folder(cfg), bundle_entry(cfg)
    if final.exists():
        raise FileExistsError(f"{final} exists already; choose another run.bundle")
    if not resume and (out / "state.pt").exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume or choose another run.output")
    device = pick_device(cfg.run.device, 0)
    torch.manual_seed(cfg.train.seed)
    try:
        model = SliceSegmenter(SegmenterConfig(**{**cfg.model.segmenter, "in_channels": 1, "num_classes": 2}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.segmenter: {err}") from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    real_images, real_masks, case_names, data = _load_data(cfg)
    images, masks, synthetic = downstream_pairs(cfg, real_images, real_masks)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                            weight_decay=cfg.optim.weight_decay)
    parts: dict[str, Stateful] = {"model": model, "optimizer_model": opt}
    step = restore_training(out, parts, cfg.to_dict(), len(images), clock) if resume else 0
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    log = CsvLog(out / "log.csv", step if resume else None)
    stop = min(cfg.train.steps, stop_after) if stop_after is not None else cfg.train.steps

    def checkpoint() -> None:
        save_training(out, parts, step, cfg.to_dict(), len(images), clock)
        plot_curves(out / "log.csv", out / "curves.png")

    with tqdm(total=stop, initial=step, desc=f"downstream R={cfg.data.ratio}", unit="step",
              disable=not cfg.run.progress) as bar:
        while step < stop:
            x, m = sample_batch(images, masks, cfg, step)
            loss = loss_fn(model(x.to(device)), m.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            log.append({"step": step, "total": float(loss.detach())})
            bar.update()
            if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0 and step < stop:
                checkpoint()
    checkpoint()
    if step == cfg.train.steps:
        val_images, val_masks, val_names, _ = _load_data(cfg, validation=True)
        scores = morphological_fidelity(val_masks, predicted_masks(model, val_images, device),
                                        SOURCE_SIDE / cfg.data.size)
        result = {"ratio": cfg.data.ratio, "real_slices": len(real_images), "synthetic_slices": synthetic,
                  "validation_cases": val_names, "validation_slices": len(val_images),
                  "dice": scores["dice"], "hd95": scores["hd95"]}
        (out / "validation.json").write_text(json.dumps(result, indent=1))
        print(f"R={cfg.data.ratio}: validation Dice {result['dice']:.4f}, HD95 {result['hd95']:.2f} mm "
              f"({len(val_images)} tumour slices)")
        prov = {"config": cfg.to_dict(), "steps": step, "train_cases": case_names, "train_slices": len(images),
                "synthetic_slices": synthetic, "validation": result, SIZE_KEY: cfg.data.size,
                "time": {**clock.to_state(), "finished": now()},
                "software": {"torch": torch.__version__, "python": platform.python_version()}}
        save_checkpoint(model, final, CheckpointMeta(
            kind="segmenter", task=data["task"].name, modalities=(cfg.data.modality,),
            normalization={cfg.data.modality: data["norms"][cfg.data.modality]}, views=("axial",), provenance=prov))
    return out
