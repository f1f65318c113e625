"""Training of the 3D BraTS segmenter (`models.segmenter3d`) on random patches of the coarse-grid cases.

Every training case is read once, cropped to its brain and brought to the network's grid exactly as inference
does it (`infer.segment.coarse_inputs`; its labels, read in the 2023 numbering, become the ET / TC / WT region
targets). A patch is centred on a tumour voxel with probability `patch.tumour_fraction`, else placed
uniformly; each is flipped along random axes and each channel scaled by U(0.9, 1.1) and shifted by
U(-0.1, 0.1) inside the brain. Loss: MONAI `DiceCELoss` on sigmoid outputs (soft Dice + binary cross-entropy
per region). AdamW with warm-up and cosine decay. The run folder gets `log.csv` + `curves.png`, a resumable
`state.pt` every `run.checkpoint_every` steps (`--resume` continues: the patches of step s depend only on the
seed and s) and, at the end, `segmenter3d/` (kind "segmenter3d", task "segment").
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from monai.losses import DiceCELoss
from tqdm.auto import tqdm

from conventions.regions import REGION_NAMES, regions_from_labels
from infer.engine.segmentation import coarse_inputs, coarse_regions
from conventions.tasks import SEGMENT
from models.checkpoint import CheckpointMeta, save_checkpoint
from models.segmenter3d import Segmenter3D, Segmenter3DConfig
from train.data.cases import TrainCase, get_task, load_case
from train.config import ConfigError, VolumeConfig
from train.curves import CsvLog, plot_curves
from train.distributed import pick_device
from train.run import now, training_cases
from train.schedule import warmup_cosine
from train.state import Stateful, TrainingClock, restore_training, save_training
from train.volumetric import crop_patch, optimizer_step, run_provenance, window_settings

CHECKPOINT = "segmenter3d"


@dataclass
class CoarseCase:
    """A training case on the network's grid: inputs (M, x, y, z), region targets (R, x, y, z) and the
    coordinates of its whole-tumour voxels (for tumour-centred patches)."""

    name: str
    inputs: np.ndarray
    regions: np.ndarray
    tumour: np.ndarray


def prepare_case(case: TrainCase, modalities: Sequence[str], spacing_mm: float) -> CoarseCase:
    """Read one labelled case and bring it to the coarse grid."""
    volumes, seg = load_case(case, modalities)
    if seg is None:
        raise ValueError(f"{case.name}: the segmenter trains on labelled cases; no segmentation found")
    x, box = coarse_inputs(volumes, modalities, spacing_mm)
    regions = coarse_regions(regions_from_labels(seg), box, spacing_mm).numpy()
    return CoarseCase(case.name, x.numpy(), regions, np.argwhere(regions[REGION_NAMES.index("WT")] > 0))


def sample_patches(cases: Sequence[CoarseCase], size: Sequence[int], batch: int, tumour_fraction: float,
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, M, *size) augmented inputs and (B, R, *size) region targets (see the module docstring)."""
    xs, ys = [], []
    for _ in range(batch):
        case = cases[rng.integers(len(cases))]
        shape = case.inputs.shape[1:]
        if len(case.tumour) and rng.random() < tumour_fraction:
            centre = case.tumour[rng.integers(len(case.tumour))]
            corner = [int(np.clip(c - s // 2, 0, max(n - s, 0))) for c, s, n in zip(centre, size, shape)]
        else:
            corner = [int(rng.integers(max(n - s, 0) + 1)) for n, s in zip(shape, size)]
        x, y = crop_patch(case.inputs, corner, size, 0.0), crop_patch(case.regions, corner, size, 0.0)
        flips = [1 + a for a in range(3) if rng.random() < 0.5]
        x, y = np.flip(x, flips), np.flip(y, flips)
        brain = (x != 0).any(axis=0)
        scale = rng.uniform(0.9, 1.1, (len(x), 1, 1, 1)).astype(np.float32)
        shift = rng.uniform(-0.1, 0.1, (len(x), 1, 1, 1)).astype(np.float32)
        xs.append(np.where(brain, x * scale + shift, 0.0).astype(np.float32))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def segmenter_config(cfg: VolumeConfig, modalities: int) -> Segmenter3DConfig:
    """`model.segmenter3d` for `modalities` inputs and the BraTS regions; patches must suit its down-sampling."""
    try:
        config = Segmenter3DConfig(**{**cfg.model.segmenter3d, "in_channels": modalities,
                                      "out_channels": len(REGION_NAMES)})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.segmenter3d: {err}") from None
    if any(side % config.size_multiple for side in cfg.patch.size):
        raise ConfigError(f"patch.size {cfg.patch.size}: every side must be a multiple of {config.size_multiple}")
    return config


def segmenter_inputs(cfg: VolumeConfig, available: Sequence[str]) -> tuple[str, ...]:
    """The modalities the segmenter reads: `data.inputs` in the task's order, or all of `available`."""
    unknown = sorted(set(cfg.data.inputs) - set(available))
    if unknown:
        raise ConfigError(f"data.inputs: unknown modalities {', '.join(unknown)}; known: {', '.join(available)}")
    return tuple(m for m in available if m in cfg.data.inputs) if cfg.data.inputs else tuple(available)


def fit_segmenter3d(cfg: VolumeConfig, resume: bool = False, stop_after: int | None = None) -> Path:
    """Train (or continue training) the 3D segmenter as configured; returns the run folder."""
    clock = TrainingClock(now())
    task = get_task(cfg.data.task)
    modalities = segmenter_inputs(cfg, task.modalities)
    config = segmenter_config(cfg, len(modalities))
    window = window_settings(cfg)
    out = Path(cfg.run.output)
    if (out / CHECKPOINT).exists():
        raise FileExistsError(f"{out / CHECKPOINT} exists already; choose another run.output")
    if not resume and (out / "state.pt").exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume or choose another run.output")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    device = pick_device(cfg.run.device, 0)
    train_cases, _ = training_cases(cfg, task)
    cases = [prepare_case(c, modalities, config.spacing_mm)
             for c in tqdm(train_cases, desc="preparing cases", unit="case", disable=not cfg.run.progress)]
    torch.manual_seed(cfg.train.seed)
    model = Segmenter3D(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  weight_decay=1e-5)
    loss_fn = DiceCELoss(sigmoid=True, smooth_nr=0.0, smooth_dr=1e-5, squared_pred=True)
    parts: dict[str, Stateful] = {"model": model, "optimizer": optimizer}
    steps = cfg.train.steps
    step = restore_training(out, parts, cfg.to_dict(), len(cases), clock) if resume else 0
    warmup = max(math.ceil(cfg.optim.warmup_fraction * steps), 1)
    log = CsvLog(out / "log.csv", step if resume else None)
    stop = min(steps, stop_after) if stop_after is not None else steps

    def checkpoint() -> None:
        save_training(out, parts, step, cfg.to_dict(), len(cases), clock)
        plot_curves(out / "log.csv", out / "curves.png")

    with tqdm(total=stop, initial=step, desc="segmenter3d", unit="step", disable=not cfg.run.progress) as bar:
        while step < stop:
            rng = np.random.default_rng([cfg.train.seed, step])
            x, y = sample_patches(cases, cfg.patch.size, cfg.train.batch_size, cfg.patch.tumour_fraction, rng)
            loss = loss_fn(model(x.to(device)), y.to(device))
            lr = warmup_cosine(step, steps, cfg.optim.lr, warmup, cfg.optim.min_lr_fraction)
            optimizer_step(model, optimizer, loss, lr, cfg.optim.grad_clip)
            step += 1
            log.append({"step": step, "dice_ce": float(loss.detach()), "lr": lr})
            bar.update()
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0 and step < stop:
                checkpoint()
    checkpoint()
    if step == steps:
        meta = CheckpointMeta(kind="segmenter3d", task=SEGMENT.name, modalities=modalities, views=(),
                              provenance=run_provenance(cfg, cases, window, clock.started, clock.seconds))
        save_checkpoint(model, out / CHECKPOINT, meta)
    return out
