"""Training of TISS-Net (`models.tissnet`, document 004) on random 2.5D patches of labelled cases.

Every training case is read once, normalised (`data.normalization`, per case for BraTS 2018) and cropped to
its brain; the whole-tumour mask is the target of every segmentation output. A patch of `patch.size` (X, Y, Z)
is centred on a tumour voxel with probability `patch.tumour_fraction`, else placed uniformly; the patches of
step s depend only on the seed and s, so `--resume` continues the same sequence.

Two stages (`model.stage`):
- "perceptual": S_p, the segmenter of the real target modality alone (Dice loss), frozen later in the
  perceptibility term; writes `perceptual/`.
- "joint": G, S, D_g and D_t end to end (eq. 10-11). Generator + segmentor loss, the terms of
  `generator_terms` weighted as in the paper: alpha_g L1 + LSGAN of the conditional global PatchGAN;
  alpha_t L1 + LSGAN of the local PatchGAN on the tumour's bounding box (outside it every image is the
  normalised background); lambda_p Dice of the frozen S_p on the synthesis (`model.perceptual_segmenter`);
  lambda_c coarse Dice; lambda_S (fine Dice + error Dice + consistency). Discriminators: least squares
  (eq. 3). Writes `tissnet/` (G + S, what inference runs; its provenance declares the target and the window)
  and `discriminators/`.
Adam at `optim.lr`, constant for `optim.constant_fraction` of the steps, then linearly down to 0. The run
folder gets `config.yaml`, `log.csv` + `curves.png` (every term and the rate per step) and a resumable
`state.pt` every `run.checkpoint_every` steps and when the run stops.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from monai.losses import DiceLoss
from torch import nn
from tqdm.auto import tqdm

from conventions.normalization import Normalization
from conventions.regions import region_mask
from infer.engine.intensity import normalize
from infer.engine.patches import WindowSettings
from infer.engine.tissnet import TARGETS_KEY
from models.checkpoint import CheckpointMeta, load_model, save_checkpoint
from models.tissnet import (PatchGANConfig, PerceptualConfig, PerceptualSegmenter, TissNet, TissNetConfig,
                            TissNetDiscriminators, TissNetOutput, consistency, error_target, refined_mask)
from train.config import ConfigError, VolumeRunConfig, VolumeTrainConfig
from train.curves import CsvLog, plot_curves
from train.data.cache import brain_box, foreground_masks
from train.data.cases import TrainCase, get_task, load_case
from train.distributed import pick_device
from train.run import normalization, now, training_cases
from train.schedule import set_lr
from train.state import Stateful, TrainingClock, restore_training, save_training
from train.volumetric import crop_patch, run_provenance

STAGES: tuple[str, ...] = ("joint", "perceptual")
CHECKPOINTS: dict[str, str] = {"joint": "tissnet", "perceptual": "perceptual"}
"""The folder of each stage's final checkpoint in the run folder."""


@dataclass
class TissNetData:
    """roots, task, normalization, stats, split, val_cases, val_fraction, split_seed, require_seg: as in
    `train.config.DataConfig`. target: the missing modality synthesised. region: the tumour region segmented."""

    roots: list[str] = field(default_factory=list)
    task: str = "brasyn"
    normalization: str = "case"
    stats: str | None = None
    target: str = "t2f"
    region: str = "WT"
    split: str | None = None
    val_cases: list[str] = field(default_factory=list)
    val_fraction: float = 0.0
    split_seed: int = 0
    require_seg: bool = True


@dataclass
class TissNetModel:
    """stage: "joint" or "perceptual" (module docstring). tissnet / discriminator / perceptual: keyword
    arguments of `TissNetConfig` / `PatchGANConfig` / `PerceptualConfig`. perceptual_segmenter: the S_p
    checkpoint folder (a "perceptual" run's `perceptual/`), needed by the joint stage when loss.lambda_p > 0."""

    family: str = "tissnet"
    stage: str = "joint"
    tissnet: dict = field(default_factory=dict)
    discriminator: dict = field(default_factory=dict)
    perceptual: dict = field(default_factory=dict)
    perceptual_segmenter: str | None = None


@dataclass
class TissNetLoss:
    """The paper's weights (section 4.1); adversarial: the weight of each LSGAN term of G (1 in the paper)."""

    alpha_g: float = 50.0
    alpha_t: float = 200.0
    lambda_p: float = 25.0
    lambda_c: float = 1.0
    lambda_s: float = 25.0
    adversarial: float = 1.0


@dataclass
class TissNetPatch:
    """size: training patch and inference window (X, Y, Z); the paper's 16x128x128 axial slabs are
    [128, 128, 16]. tumour_fraction: share of patches centred on a tumour voxel. overlap, blend, sigma_scale,
    window_batch: the sliding window of inference (`infer.engine.patches.WindowSettings`)."""

    size: list[int] = field(default_factory=lambda: [128, 128, 16])
    tumour_fraction: float = 0.5
    overlap: float = 0.5
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    window_batch: int = 1


@dataclass
class TissNetOptim:
    """Adam for every network at `lr`, constant for `constant_fraction` of the steps (the paper: 100 of 250
    epochs), then linearly down to 0."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    constant_fraction: float = 0.4


@dataclass
class TissNetRun(VolumeRunConfig):
    """`VolumeRunConfig` with TISS-Net's defaults."""

    output: str = "runs/tissnet"
    checkpoint_every: int = 500


@dataclass
class TissNetTrainingConfig:
    """A TISS-Net training configuration (`python -m train fit`, `model.family: tissnet`)."""

    data: TissNetData = field(default_factory=TissNetData)
    model: TissNetModel = field(default_factory=TissNetModel)
    loss: TissNetLoss = field(default_factory=TissNetLoss)
    patch: TissNetPatch = field(default_factory=TissNetPatch)
    optim: TissNetOptim = field(default_factory=TissNetOptim)
    train: VolumeTrainConfig = field(default_factory=VolumeTrainConfig)
    run: TissNetRun = field(default_factory=TissNetRun)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class JointCase:
    """A training case: normalised images (M, x, y, z) cropped to the brain (float16), its tumour mask
    (x, y, z) and the coordinates of the tumour's voxels."""

    name: str
    images: np.ndarray
    tumour: np.ndarray
    voxels: np.ndarray


@dataclass
class JointBatch:
    """sources (B, M-1, X, Y, Z) in model order, target (B, 1, ...), tumour (B, 1, ...) {0, 1} and box
    (B, 1, ...) bool, the bounding box of each patch's tumour (empty without one)."""

    sources: torch.Tensor
    target: torch.Tensor
    tumour: torch.Tensor
    box: torch.Tensor

    def to(self, device: torch.device) -> JointBatch:
        return JointBatch(*(t.to(device) for t in (self.sources, self.target, self.tumour, self.box)))


def prepare_case(case: TrainCase, modalities: Sequence[str], norms: dict[str, Normalization],
                 region: str) -> JointCase:
    """Read, normalise and crop one labelled case."""
    volumes, seg = load_case(case, modalities)
    if seg is None:
        raise ValueError(f"{case.name}: TISS-Net trains on labelled cases; no segmentation found")
    masks = foreground_masks(volumes, modalities, norms)
    box = brain_box(masks)
    images = np.stack([normalize(volumes[m], norms[m], masks[i])[box] for i, m in enumerate(modalities)])
    tumour = region_mask(seg, region)[box]
    return JointCase(case.name, images.astype(np.float16), tumour, np.argwhere(tumour))


def tumour_box(tumour: np.ndarray) -> np.ndarray:
    """Bool mask of the bounding box of the voxels of `tumour` (all False without any)."""
    box = np.zeros(tumour.shape, dtype=bool)
    if tumour.any():
        lo, hi = np.argwhere(tumour).min(axis=0), np.argwhere(tumour).max(axis=0) + 1
        box[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return box


def sample_batch(cases: Sequence[JointCase], size: Sequence[int], batch: int, tumour_fraction: float, target: int,
                 fill: float, rng: np.random.Generator) -> JointBatch:
    """`batch` random patches (module docstring) split into sources and target."""
    images, tumours = [], []
    for _ in range(batch):
        case = cases[rng.integers(len(cases))]
        shape = case.images.shape[1:]
        if len(case.voxels) and rng.random() < tumour_fraction:
            centre = case.voxels[rng.integers(len(case.voxels))]
            corner = [int(np.clip(c - s // 2, 0, max(n - s, 0))) for c, s, n in zip(centre, size, shape)]
        else:
            corner = [int(rng.integers(max(n - s, 0) + 1)) for n, s in zip(shape, size)]
        images.append(crop_patch(case.images, corner, size, fill))
        tumours.append(crop_patch(case.tumour[None].astype(np.float32), corner, size, 0.0))
    x, y = torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(tumours))
    sources = [i for i in range(x.shape[1]) if i != target]
    box = torch.from_numpy(np.stack([tumour_box(t > 0) for t in y.numpy()]))
    return JointBatch(x[:, sources], x[:, target:target + 1], y, box)


def lsgan(scores: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean (D - 1)^2 towards real, mean D^2 towards fake."""
    return (scores - 1).pow(2).mean() if real else scores.pow(2).mean()


@dataclass
class JointNetworks:
    net: TissNet
    discriminators: TissNetDiscriminators
    perceptual: nn.Module | None


def generator_terms(nets: JointNetworks, batch: JointBatch, fill: float, dice: nn.Module
                    ) -> tuple[dict[str, torch.Tensor], TissNetOutput]:
    """Every unweighted term of G and S (eq. 1-10) on `batch`, and the outputs. The tumour-box images are the
    images inside each patch's tumour box and `fill` (the normalised background) outside it."""
    out = nets.net(batch.sources)
    fake, real, y, box = out.synthesis, batch.target, batch.tumour, batch.box
    d_g, d_t = nets.discriminators.global_, nets.discriminators.tumour
    terms = {"l1_global": F.l1_loss(fake, real),
             "adv_global": lsgan(d_g(torch.cat([batch.sources, fake], 1)), real=True),
             "l1_tumour": F.l1_loss(torch.where(box, fake, fill), torch.where(box, real, fill)),
             "adv_tumour": lsgan(d_t(torch.cat([torch.where(box, batch.sources, fill), torch.where(box, fake, fill)],
                                                1)), real=True)}
    if nets.perceptual is not None:
        terms["perceptual"] = dice(nets.perceptual(fake), y)
    coarse, fine, error = torch.sigmoid(out.coarse), torch.sigmoid(out.fine), torch.sigmoid(out.error)
    terms["coarse"] = dice(out.coarse, y)
    terms["fine"] = dice(out.fine, y)
    terms["error"] = dice(out.error, error_target(coarse, y))
    terms["consistency"] = consistency(fine, refined_mask(coarse, error))
    return terms, out


def weighted_total(terms: dict[str, torch.Tensor], w: TissNetLoss) -> torch.Tensor:
    """L_syn + lambda_c L_c + lambda_S L_S (eq. 6, 10)."""
    weights = {"l1_global": w.alpha_g, "adv_global": w.adversarial, "l1_tumour": w.alpha_t,
               "adv_tumour": w.adversarial, "perceptual": w.lambda_p, "coarse": w.lambda_c, "fine": w.lambda_s,
               "error": w.lambda_s, "consistency": w.lambda_s}
    return sum(weights[name] * value for name, value in terms.items())


def discriminator_terms(discriminators: TissNetDiscriminators, batch: JointBatch, fake: torch.Tensor,
                        fill: float) -> dict[str, torch.Tensor]:
    """L_Dg and L_Dt (eq. 3, 11) with the synthesis `fake` detached."""
    fake, box = fake.detach(), batch.box
    d_g, d_t = discriminators.global_, discriminators.tumour
    masked_sources = torch.where(box, batch.sources, fill)
    return {"d_global": lsgan(d_g(torch.cat([batch.sources, batch.target], 1)), True)
            + lsgan(d_g(torch.cat([batch.sources, fake], 1)), False),
            "d_tumour": lsgan(d_t(torch.cat([masked_sources, torch.where(box, batch.target, fill)], 1)), True)
            + lsgan(d_t(torch.cat([masked_sources, torch.where(box, fake, fill)], 1)), False)}


def dice_loss() -> DiceLoss:
    """Soft Dice of sigmoid logits against {0, 1} masks, counts pooled over the batch."""
    return DiceLoss(sigmoid=True, batch=True)


def constant_then_linear(step: int, total: int, peak: float, constant_fraction: float) -> float:
    """`peak` for the first `constant_fraction` of `total` steps, then linearly down to 0 at step `total`."""
    constant = int(constant_fraction * total)
    if step < constant:
        return peak
    return peak * max(total - step, 0) / max(total - constant, 1)


def _check(cfg: TissNetTrainingConfig) -> None:
    if cfg.model.stage not in STAGES:
        raise ConfigError(f"model.stage must be one of {', '.join(STAGES)}, got {cfg.model.stage!r}")
    if len(cfg.patch.size) != 3 or min(cfg.patch.size) < 1:
        raise ConfigError(f"patch.size must be three positive sides (X, Y, Z), got {cfg.patch.size}")
    if not 0.0 <= cfg.optim.constant_fraction <= 1.0:
        raise ConfigError(f"optim.constant_fraction must be in [0, 1], got {cfg.optim.constant_fraction}")


def _build(cfg: TissNetTrainingConfig, inputs: int) -> tuple[nn.Module, TissNetDiscriminators | None]:
    """The network the stage trains (and the discriminators of the joint stage)."""
    try:
        if cfg.model.stage == "perceptual":
            model, discriminators = PerceptualSegmenter(PerceptualConfig(**cfg.model.perceptual)), None
        else:
            model = TissNet(TissNetConfig(**{**cfg.model.tissnet, "num_inputs": inputs}))
            discriminators = TissNetDiscriminators(PatchGANConfig(**{**cfg.model.discriminator,
                                                                     "in_channels": inputs + 1}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model: {err}") from None
    multiple = model.net.config.size_multiple if isinstance(model, PerceptualSegmenter) else model.size_multiple
    if any(side % m for side, m in zip(cfg.patch.size, multiple)):
        raise ConfigError(f"patch.size {cfg.patch.size}: every side must be a multiple of {list(multiple)}")
    return model, discriminators


def _perceptual(cfg: TissNetTrainingConfig, device: torch.device) -> nn.Module | None:
    """The frozen S_p (None when loss.lambda_p is 0)."""
    if not cfg.loss.lambda_p:
        return None
    if not cfg.model.perceptual_segmenter:
        raise ConfigError("loss.lambda_p > 0 needs model.perceptual_segmenter (a perceptual stage's perceptual/)")
    segmenter = load_model(cfg.model.perceptual_segmenter, device, kind="tissnet_perceptual")
    if segmenter.meta.provenance.get(TARGETS_KEY) != [cfg.data.target]:
        raise ConfigError(f"model.perceptual_segmenter segments {segmenter.meta.provenance.get(TARGETS_KEY)}, "
                          f"not data.target {cfg.data.target}")
    return segmenter.requires_grad_(False)


def fit_tissnet(cfg: TissNetTrainingConfig, resume: bool = False, stop_after: int | None = None) -> Path:
    """Train (or continue training) the configured stage; returns the run folder."""
    _check(cfg)
    clock = TrainingClock(now())
    task = get_task(cfg.data.task)
    if cfg.data.target not in task.target_modalities:
        raise ConfigError(f"data.target: task {task.name} synthesises {', '.join(task.target_modalities)}, "
                          f"not {cfg.data.target!r}")
    target = task.modalities.index(cfg.data.target)
    model, discriminators = _build(cfg, len(task.modalities) - 1)
    try:
        window = WindowSettings(tuple(cfg.patch.size), cfg.patch.overlap, cfg.patch.blend, cfg.patch.sigma_scale,
                                cfg.patch.window_batch)
    except ValueError as err:
        raise ConfigError(f"patch: {err}") from None
    out = Path(cfg.run.output)
    final = out / CHECKPOINTS[cfg.model.stage]
    if final.exists():
        raise FileExistsError(f"{final} exists already; choose another run.output")
    if not resume and (out / "state.pt").exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume or choose another run.output")
    device = pick_device(cfg.run.device, 0)
    perceptual = _perceptual(cfg, device) if cfg.model.stage == "joint" else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    norms = normalization(cfg, task)
    fill = norms[task.modalities[0]].background
    train_cases, _ = training_cases(cfg, task)
    cases = [prepare_case(c, task.modalities, norms, cfg.data.region)
             for c in tqdm(train_cases, desc="preparing cases", unit="case", disable=not cfg.run.progress)]

    torch.manual_seed(cfg.train.seed)
    model.to(device).train()
    betas = tuple(cfg.optim.betas)
    opt_g = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=betas)
    opt_d = None
    if discriminators is not None:
        discriminators.to(device).train()
        opt_d = torch.optim.Adam(discriminators.parameters(), lr=cfg.optim.lr, betas=betas)
    parts: dict[str, Stateful] = {"model": model, "optimizer": opt_g}
    if discriminators is not None:
        parts |= {"discriminators": discriminators, "optimizer_d": opt_d}
    steps = cfg.train.steps
    step = restore_training(out, parts, cfg.to_dict(), len(cases), clock) if resume else 0
    log = CsvLog(out / "log.csv", step if resume else None)
    stop = min(steps, stop_after) if stop_after is not None else steps
    dice = dice_loss()

    def checkpoint() -> None:
        save_training(out, parts, step, cfg.to_dict(), len(cases), clock)
        plot_curves(out / "log.csv", out / "curves.png")

    with tqdm(total=stop, initial=step, desc=f"tissnet {cfg.model.stage}", unit="step",
              disable=not cfg.run.progress) as bar:
        while step < stop:
            rng = np.random.default_rng([cfg.train.seed, step])
            batch = sample_batch(cases, cfg.patch.size, cfg.train.batch_size, cfg.patch.tumour_fraction, target,
                                 fill, rng).to(device)
            lr = constant_then_linear(step, steps, cfg.optim.lr, cfg.optim.constant_fraction)
            if discriminators is None:
                logs = perceptual_step(model, opt_g, batch, dice, lr)
            else:
                logs = joint_step(JointNetworks(model, discriminators, perceptual), opt_g, opt_d, batch, cfg.loss,
                                  fill, dice, lr)
            step += 1
            log.append({"step": step, **logs, "lr": lr})
            bar.update()
            bar.set_postfix(loss=f"{logs['total']:.4f}")
            if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0 and step < stop:
                checkpoint()
    checkpoint()
    if step == steps:
        prov = run_provenance(cfg, cases, window, clock.started, clock.seconds,
                              **{TARGETS_KEY: [cfg.data.target], "stage": cfg.model.stage})
        meta = CheckpointMeta(kind="tissnet", task=task.name, modalities=task.modalities, normalization=norms,
                              views=("axial",), provenance=prov)
        if discriminators is None:
            save_checkpoint(model, final, replace(meta, kind="tissnet_perceptual"))
        else:
            save_checkpoint(model, final, meta)
            save_checkpoint(discriminators, out / "discriminators", replace(meta, kind="tissnet_discriminators"))
    return out


def perceptual_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: JointBatch, dice: nn.Module,
                    lr: float) -> dict[str, float]:
    """One Dice step of S_p on the real target modality."""
    loss = dice(model(batch.target), batch.tumour)
    set_lr(optimizer, lr)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"total": float(loss.detach())}


def joint_step(nets: JointNetworks, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, batch: JointBatch,
               weights: TissNetLoss, fill: float, dice: nn.Module, lr: float) -> dict[str, float]:
    """One step of G + S (the discriminators frozen meanwhile), then one of D_g + D_t; every term's value."""
    nets.discriminators.requires_grad_(False)
    terms, out = generator_terms(nets, batch, fill, dice)
    total = weighted_total(terms, weights)
    set_lr(opt_g, lr)
    opt_g.zero_grad(set_to_none=True)
    total.backward()
    opt_g.step()
    nets.discriminators.requires_grad_(True)
    d_terms = discriminator_terms(nets.discriminators, batch, out.synthesis, fill)
    set_lr(opt_d, lr)
    opt_d.zero_grad(set_to_none=True)
    sum(d_terms.values()).backward()
    opt_d.step()
    return {name: float(value.detach()) for name, value in {**terms, **d_terms, "total": total}.items()}
