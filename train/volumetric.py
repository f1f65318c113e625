"""Patch training of the volumetric models (3D refiner, full-3D generator): random 3D patches of the cached
volumes (`train.data.volumes`), L1 + 3D SSIM over the brain, the training loop and what a run records."""
from __future__ import annotations

import math
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm.auto import tqdm

from infer.evaluate.metrics import SSIM_K1, SSIM_K2, SSIM_SIGMA, gaussian_window
from infer.engine.patches import WINDOW_KEY, WindowSettings
from train.config import ConfigError, VolumeConfig
from train.curves import CsvLog, plot_curves
from train.run import now
from train.schedule import set_lr, warmup_cosine
from train.data.volumes import VolumeCase


@dataclass
class PatchBatch:
    """Random patches: inputs (B, M, X, Y, Z) with the target channel set to background, available (B, M),
    target (B,) modality index, reference (B, 1, X, Y, Z) the true target, brain (B, 1, X, Y, Z) its voxels with
    signal, and synthesis (B, 1, X, Y, Z) the generator's volume (None without a generator)."""

    inputs: torch.Tensor
    available: torch.Tensor
    target: torch.Tensor
    reference: torch.Tensor
    brain: torch.Tensor
    synthesis: torch.Tensor | None

    def to(self, device: torch.device) -> PatchBatch:
        return PatchBatch(*(None if t is None else t.to(device) for t in
                            (self.inputs, self.available, self.target, self.reference, self.brain, self.synthesis)))


def crop_patch(volume: np.ndarray, corner: Sequence[int], size: Sequence[int], fill: float) -> np.ndarray:
    """(..., size) float32 window of (..., X, Y, Z) at `corner`, `fill` where it reaches beyond the volume."""
    out = np.full((*volume.shape[:-3], *size), fill, dtype=np.float32)
    src = tuple(slice(c, min(c + s, n)) for c, s, n in zip(corner, size, volume.shape[-3:]))
    out[(..., *(slice(0, s.stop - s.start) for s in src))] = volume[(..., *src)]
    return out


class PatchSampler:
    """Seeded random patches of `size`: a uniform case, a uniform target of `targets` (modality indices) and a
    uniform corner (a side larger than the case's brain box starts at 0 and is padded with `fill`). Only the
    `inputs` modalities (default all) are given: the target and every other channel are `fill`, unavailable."""

    def __init__(self, cases: Sequence[VolumeCase], modalities: Sequence[str], targets: Sequence[str],
                 size: Sequence[int], fill: float, seed: int, with_synthesis: bool,
                 inputs: Sequence[str] | None = None) -> None:
        if not cases:
            raise ValueError("no case to sample patches from")
        self.cases, self.modalities, self.size, self.fill = list(cases), list(modalities), list(size), fill
        self.targets = [self.modalities.index(t) for t in targets]
        self.with_synthesis = with_synthesis
        self.given = torch.tensor([inputs is None or m in inputs for m in self.modalities])
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> PatchBatch:
        inputs, targets, synthesis = [], [], []
        for _ in range(batch_size):
            case = self.cases[self.rng.integers(len(self.cases))]
            target = self.targets[self.rng.integers(len(self.targets))]
            corner = [int(self.rng.integers(max(n - s, 0) + 1)) for n, s in zip(case.inputs.shape[1:], self.size)]
            inputs.append(crop_patch(case.inputs, corner, self.size, self.fill))
            targets.append(target)
            if self.with_synthesis:
                synthesis.append(crop_patch(case.synthesis[self.modalities[target]], corner, self.size, self.fill))
        x = torch.from_numpy(np.stack(inputs))
        target_t = torch.tensor(targets)
        rows = torch.arange(batch_size)
        reference = x[rows, target_t][:, None]  # advanced indexing copies
        x[rows, target_t] = self.fill
        x[:, ~self.given] = self.fill
        available = self.given.expand(x.shape[:2]).clone()
        available[rows, target_t] = False
        return PatchBatch(x, available, target_t, reference, reference != self.fill,
                          torch.from_numpy(np.stack(synthesis))[:, None] if synthesis else None)


def ssim3d_map(pred: torch.Tensor, target: torch.Tensor, data_range: float, sigma: float = SSIM_SIGMA,
               k1: float = SSIM_K1, k2: float = SSIM_K2) -> torch.Tensor:
    """Full-size 3D SSIM map of (B, 1, X, Y, Z) inputs: the Gaussian window of `infer.evaluate.metrics` applied along
    each axis in turn as a sum of shifted copies (a dense 11^3 kernel, or a depthwise conv3d, is slow on a CPU)
    on reflect-padded inputs."""
    taps = [float(w) for w in gaussian_window(sigma)]
    pad = len(taps) // 2
    x = F.pad(pred, (pad,) * 6, mode="reflect")
    y = F.pad(target, (pad,) * 6, mode="reflect")
    moments = torch.cat((x, y, x * x, y * y, x * y), dim=1)
    for axis in (2, 3, 4):
        n = moments.shape[axis] - 2 * pad
        moments = sum(w * moments.narrow(axis, k, n) for k, w in enumerate(taps))
    mu_x, mu_y, e_xx, e_yy, e_xy = moments.split(1, dim=1)
    var_x, var_y = (e_xx - mu_x * mu_x).clamp_min(0), (e_yy - mu_y * mu_y).clamp_min(0)
    cov = e_xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))


class BrainL1SSIMLoss(nn.Module):
    """`l1` * L1 + `ssim` * (1 - 3D SSIM), each averaged over the brain voxels of the batch (0 without any);
    the SSIM data range is the batch reference's (detached). Returns the total and each term."""

    def __init__(self, l1: float, ssim: float) -> None:
        super().__init__()
        self.l1, self.ssim = l1, ssim

    def forward(self, pred: torch.Tensor, reference: torch.Tensor,
                brain: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        pred, weight = pred.float(), brain.float()
        count = weight.sum().clamp_min(1.0)
        l1 = ((pred - reference).abs() * weight).sum() / count
        data_range = float((reference.max() - reference.min()).detach()) or 1.0
        ssim = (ssim3d_map(pred, reference, data_range) * weight).sum() / count
        dissimilarity = (1.0 - ssim) * (weight.sum() > 0)
        total = self.l1 * l1 + self.ssim * dissimilarity
        return total, {"l1": float(l1.detach()), "ssim": float(ssim.detach())}


def prepare_run(cfg: VolumeConfig, checkpoint: str) -> Path:
    """The run folder with the resolved config in it; refuses one that already holds the final `checkpoint`."""
    out = Path(cfg.run.output)
    if (out / checkpoint).exists():
        raise FileExistsError(f"{out / checkpoint} exists already; choose another run.output")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return out


def run_provenance(cfg: VolumeConfig, cases: Sequence[VolumeCase], window: WindowSettings, started: str,
                   seconds: float, **extra: object) -> dict[str, object]:
    """What a volumetric checkpoint records: how it was trained, and its sliding window (`WINDOW_KEY`)."""
    return {"config": cfg.to_dict(), "steps": cfg.train.steps, "train_cases": [c.name for c in cases],
            WINDOW_KEY: window.to_json(),
            "time": {"started": started, "finished": now(), "train_seconds": round(seconds, 1)},
            "software": {"torch": torch.__version__, "python": platform.python_version()}, **extra}


def window_settings(cfg: VolumeConfig) -> WindowSettings:
    """The sliding window inference uses, from `patch` (recorded in the checkpoint); a patch side must exceed
    half the SSIM window."""
    half_window = len(gaussian_window(SSIM_SIGMA)) // 2
    if min(cfg.patch.size, default=0) <= half_window:
        raise ConfigError(f"patch.size {cfg.patch.size}: every side must exceed {half_window} (the 3D SSIM window)")
    try:
        return WindowSettings(tuple(cfg.patch.size), cfg.patch.overlap, cfg.patch.blend, cfg.patch.sigma_scale,
                              cfg.patch.window_batch)
    except ValueError as err:
        raise ConfigError(f"patch: {err}") from None


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float,
                   grad_clip: float) -> None:
    """One step on `loss` at rate `lr`, gradients clipped at norm `grad_clip` (0 = off)."""
    set_lr(optimizer, lr)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()


def fit_patches(model: nn.Module, predict: Callable[[nn.Module, PatchBatch], torch.Tensor], sampler: PatchSampler,
                cfg: VolumeConfig, out: Path, device: torch.device, desc: str) -> None:
    """Train `model` for `train.steps` Adam steps on random patches (`predict(model, batch)` -> prediction);
    every step's loss terms and learning rate go to `out/log.csv`, plotted in `out/curves.png`."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))
    loss_fn = BrainL1SSIMLoss(cfg.loss.l1, cfg.loss.ssim)
    steps = cfg.train.steps
    warmup = max(math.ceil(cfg.optim.warmup_fraction * steps), 1)
    log = CsvLog(out / "log.csv")
    with tqdm(range(steps), desc=desc, unit="step", disable=not cfg.run.progress) as bar:
        for step in bar:
            batch = sampler.sample(cfg.train.batch_size).to(device)
            loss, terms = loss_fn(predict(model, batch), batch.reference, batch.brain)
            lr = warmup_cosine(step, steps, cfg.optim.lr, warmup, cfg.optim.min_lr_fraction)
            optimizer_step(model, optimizer, loss, lr, cfg.optim.grad_clip)
            log.append({"step": step + 1, "loss": float(loss.detach()), **terms, "lr": lr})
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    plot_curves(out / "log.csv", out / "curves.png")
