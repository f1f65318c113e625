"""The 2D + 3D-refinement regime: cache a frozen 2D generator's volumes, then train the residual 3D refiner.

`cache_generator_volumes` runs the generator (`model.generator`) through the inference engine on every
training case with each modality as the target, and keeps the normalised synthesis the engine hands to its
refine hook (after stacking and view averaging, before background and denormalisation) in `data.cache_dir`.
`fit_refiner` trains `models.refiner.Refiner3D` on random patches of (synthesis + the three other modalities)
-> target with L1 + 3D SSIM over the brain and writes `run.output/refiner/` (kind "refiner", the generator's
statistics, the sliding window in `provenance["sliding_window"]`). Copy that folder into the generator's
checkpoint folder as `refiner/` to have inference use it by default (`infer.engine.refine`).
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from infer.engine.slices import EngineSettings, VolumePredictor, resolve_settings
from models.checkpoint import CheckpointMeta, load_model, read_config, save_checkpoint
from models.refiner import Refiner3D, RefinerConfig
from train.data.cases import get_task
from train.config import ConfigError, VolumeConfig
from train.distributed import pick_device
from train.run import now, training_cases
from train.data.volumes import Capture, GeneratorVolumes, VolumeCase, cache_volumes, weights_sha256
from train.volumetric import PatchSampler, fit_patches, prepare_run, run_provenance, window_settings

CHECKPOINT = "refiner"


def cache_generator_volumes(cfg: VolumeConfig, device: torch.device) -> tuple[list[VolumeCase], EngineSettings]:
    """The training cases with the generator's volume of every target, cached (what is there is reused), and
    the generator's engine settings."""
    if not cfg.model.generator:
        raise ConfigError("model.generator must name the frozen 2D generator checkpoint")
    generator = load_model(cfg.model.generator, device=device)
    if getattr(generator.config, "spatial_dims", 2) != 2 or not hasattr(generator.config, "context_slices"):
        raise ConfigError(f"model.generator: {cfg.model.generator} holds a {generator.meta.kind}, not a slice generator")
    task = get_task(cfg.data.task)
    targets = generator_targets(cfg)
    # The whole volume, not the task's crop (us2mr): the cache keeps the box of every modality's foreground.
    settings = replace(resolve_settings(task, generator), crop_to=None)
    capture = Capture()
    predictor = VolumePredictor(generator, settings, device=device, refine=capture, precision="fp32")
    volumes = GeneratorVolumes(predictor, capture, weights_sha256(cfg.model.generator), targets,
                               {t: task.inputs_for(t) for t in targets})
    train_cases, _ = training_cases(cfg, task)
    cases = cache_volumes(train_cases, settings.modalities, settings.normalization, cfg.data.cache_dir, volumes,
                          cfg.run.progress)
    return cases, settings


def generator_targets(cfg: VolumeConfig) -> tuple[str, ...]:
    """The targets the refiner learns: the one a single-target generator records (`provenance["target"]`,
    the paired-translation families), else every target of the task."""
    target = read_config(cfg.model.generator)["provenance"].get("target")
    return (target,) if target else get_task(cfg.data.task).target_modalities


def fit_refiner(cfg: VolumeConfig) -> Path:
    """Train the refiner as configured (caching the generator's volumes first); returns the run folder."""
    started, clock = now(), time.monotonic()
    task = get_task(cfg.data.task)
    try:
        config = RefinerConfig(**{**cfg.model.refiner, "num_modalities": len(task.modalities)})
    except TypeError as err:
        raise ConfigError(f"model.refiner: {err}") from None
    window = window_settings(cfg)
    out = prepare_run(cfg, CHECKPOINT)
    device = pick_device(cfg.run.device, 0)
    cases, settings = cache_generator_volumes(cfg, device)
    torch.manual_seed(cfg.train.seed)
    model = Refiner3D(config)
    sampler = PatchSampler(cases, settings.modalities, generator_targets(cfg), cfg.patch.size, settings.fill,
                           cfg.train.seed, with_synthesis=True, inputs=task.input_modalities)
    fit_patches(model, lambda m, b: m(b.synthesis, b.inputs, b.target), sampler, cfg, out, device, "refiner")
    generator = {"path": str(Path(cfg.model.generator).resolve()), "sha256": weights_sha256(cfg.model.generator)}
    meta = CheckpointMeta(kind="refiner", task=task.name, modalities=settings.modalities,
                          normalization=dict(settings.normalization), views=settings.views,
                          provenance=run_provenance(cfg, cases, window, started, time.monotonic() - clock,
                                                    generator=generator))
    save_checkpoint(model, out / CHECKPOINT, meta)
    return out
