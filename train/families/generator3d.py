"""The full-3D regime: train `models.generator3d.Generator3D` on random 3D patches of the training cases.

Each patch hides one target modality (background in its channel) and is scored against it with L1 + 3D SSIM
over the brain. The cases are cached normalised in `data.cache_dir` (`train.volumetric`, statistics from
`data.stats` or the task's); the run writes `run.output/generator3d/` (kind "generator3d", the sliding window
in `provenance["sliding_window"]`), which `python -m infer --weights` runs like a slice generator.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from models.checkpoint import CheckpointMeta, save_checkpoint
from models.generator3d import Generator3D, Generator3DConfig
from train.data.cases import get_task
from train.config import ConfigError, VolumeConfig
from train.distributed import pick_device
from train.run import normalization, now, training_cases
from train.data.volumes import cache_volumes
from train.volumetric import PatchSampler, fit_patches, prepare_run, run_provenance, window_settings

CHECKPOINT = "generator3d"


def generator3d_config(cfg: VolumeConfig, modalities: int, fill: float) -> Generator3DConfig:
    """`model.generator3d` for `modalities` inputs with background `fill`; the patch sides must suit its
    down-sampling."""
    try:
        config = Generator3DConfig(**{**cfg.model.generator3d, "num_modalities": modalities, "fill_value": fill})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.generator3d: {err}") from None
    if any(side % config.patch_multiple for side in cfg.patch.size):
        raise ConfigError(f"patch.size {cfg.patch.size}: every side must be a multiple of {config.patch_multiple}")
    return config


def fit_generator3d(cfg: VolumeConfig) -> Path:
    """Train the full-3D generator as configured; returns the run folder."""
    started, clock = now(), time.monotonic()
    task = get_task(cfg.data.task)
    norms = normalization(cfg, task)
    fill = norms[task.modalities[0]].background
    config = generator3d_config(cfg, len(task.modalities), fill)
    window = window_settings(cfg)
    out = prepare_run(cfg, CHECKPOINT)
    device = pick_device(cfg.run.device, 0)
    train_cases, _ = training_cases(cfg, task)
    cases = cache_volumes(train_cases, task.modalities, norms, cfg.data.cache_dir, progress=cfg.run.progress)
    torch.manual_seed(cfg.train.seed)
    model = Generator3D(config)
    sampler = PatchSampler(cases, task.modalities, task.target_modalities, cfg.patch.size, fill, cfg.train.seed,
                           with_synthesis=False, inputs=task.input_modalities)
    fit_patches(model, lambda m, b: m(b.inputs, b.available, b.target), sampler, cfg, out, device, "full-3D")
    meta = CheckpointMeta(kind="generator3d", task=task.name, modalities=task.modalities, normalization=norms,
                          provenance=run_provenance(cfg, cases, window, started, time.monotonic() - clock))
    save_checkpoint(model, out / CHECKPOINT, meta)
    return out
