"""The GAN training run: build, (resume,) iterate batches, log, checkpoint, validate, write the final models.

Single process or `torchrun` (DDP; only rank 0 writes). The run folder (`run.output`) holds `config.yaml`,
`state.pt` (resumable state: weights, optimizers, step, RNG; rewritten every `run.checkpoint_every` steps and
when the run stops), `log.csv` and `curves.png` (every loss and the learning rate per step), `validation.csv`
and `validation-<step>.png`, and at the end `generator/` and `discriminator/` in the models checkpoint format.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from conventions.tasks import TaskSpec
from models.checkpoint import CheckpointMeta, kind_of, load_model, save_checkpoint
from models.families import FAMILIES
from models.discriminator import DiscriminatorConfig
from models.generator import GeneratorConfig
from models.unet import MultiScaleConfig, UNetConfig
from train.data.cases import get_task
from train.config import Config, ConfigError
from train.curves import CsvLog, plot_curves
from train.distributed import DistContext, barrier, init_distributed, mean_over_ranks, shutdown
from train.families.hfgan import FeatureGenerator, GanModels, GanUpdate
from train.families.pix2pix import Pix2PixModels, Pix2PixUpdate
from train.run import RunData, build_data, image_size, make_loader, now, prepare_output, provenance, total_steps
from train.data.sampler import ShardedBatches
from train.schedule import scaled_lr, warmup_cosine
from train.state import Stateful, TrainingClock, restore_training, save_training
from train.validate import engine_settings, plot_samples, validate, validation_plan


GAN_FAMILIES: tuple[str, ...] = ("hfgan", "pix2pix")
"""The families this loop trains (`models.families`: their first network is the generator, the second the
discriminator)."""


def gan_networks(family: str) -> tuple[tuple[str, type, type], tuple[str, type, type]]:
    """(kind, network class, config class) of the generator and of the discriminator of a GAN family."""
    (gen_kind, gen), (disc_kind, disc) = list(FAMILIES[family].networks.items())[:2]
    return (gen_kind, *gen), (disc_kind, *disc)


def network_configs(cfg: Config, modalities: int
                    ) -> tuple[GeneratorConfig | UNetConfig, DiscriminatorConfig | MultiScaleConfig]:
    """Generator and discriminator sizes from `model.*`; both take the sample size (`data.crop` or
    `data.slice_size`) and the number of modalities from the data (a Pix2Pix discriminator sees the inputs'
    centre slices and the output: `single_target`'s inputs plus one channel)."""
    if cfg.model.family not in GAN_FAMILIES:
        raise ConfigError(f"model.family must be one of {', '.join(GAN_FAMILIES)}, got {cfg.model.family!r}")
    size = image_size(cfg)
    if cfg.model.generator.get("image_size", size) != size:
        raise ConfigError(f"model.generator.image_size is set by the data (data.crop or data.slice_size: {size})")
    (_, _, gen_config), (_, _, disc_config) = gan_networks(cfg.model.family)
    disc_sizes = {"image_size": size, "num_classes": modalities} if cfg.model.family == "hfgan" \
        else {"image_size": size, "in_channels": len(single_target(get_task(cfg.data.task))[1]) + 1}
    try:
        gen = gen_config(**{**cfg.model.generator, "num_modalities": modalities, "image_size": size})
        disc = disc_config(**{**cfg.model.discriminator, **disc_sizes})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model: {err}") from None
    return gen, disc


def single_target(task: TaskSpec) -> tuple[int, list[int]]:
    """(target index, input indices) of the Pix2Pix family: the task's one default target and its inputs."""
    if len(task.requested_targets) != 1:
        raise ConfigError(f"model.family pix2pix needs a task with one default target; {task.name} has "
                          f"{', '.join(task.requested_targets)}")
    target = task.requested_targets[0]
    return task.modalities.index(target), [task.modalities.index(m) for m in task.inputs_for(target)]


def load_segmenter(cfg: Config, modalities: int, device: torch.device) -> torch.nn.Module | None:
    """The frozen segmenter of the Tversky term (None when the term is off)."""
    if not cfg.loss.tversky:
        return None
    if not cfg.loss.segmenter:
        raise ConfigError("loss.tversky > 0 needs loss.segmenter (a segmenter checkpoint folder)")
    segmenter = load_model(cfg.loss.segmenter, device, kind="segmenter")
    if segmenter.config.in_channels != modalities:
        raise ConfigError(f"the segmenter takes {segmenter.config.in_channels} channels, not {modalities} modalities")
    return segmenter.requires_grad_(False).eval()


def check_validation(cfg: Config) -> None:
    if cfg.run.validate_every and image_size(cfg) < cfg.data.slice_size:
        raise ConfigError("validation runs whole volumes through the inference engine, which cannot take a "
                          "generator trained on crops; set run.validate_every=0 or data.crop=null")


def trained_targets(names: list[str] | None, task: TaskSpec) -> tuple[str, ...]:
    """The target modality of each optimizer step of a batch: `names` (repeats weight a target) or the task's
    target modalities once each."""
    if names is None:
        return task.target_modalities
    unknown = sorted(set(names) - set(task.target_modalities))
    if not names or unknown:
        raise ConfigError(f"train.targets must name modalities task {task.name} can synthesise "
                          f"({', '.join(task.target_modalities)}); got {names}")
    return tuple(names)


class GanRun:
    """State and side effects of one GAN training run; `fit()` drives it."""

    def __init__(self, cfg: Config, ctx: DistContext, resume: bool) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.clock = TrainingClock(now())
        self.gen_cfg, disc_cfg = network_configs(cfg, len(get_task(cfg.data.task).modalities))
        check_validation(cfg)
        self.out = prepare_output(cfg, ctx, resume)
        self.data: RunData = build_data(cfg, ctx, self.gen_cfg.context_slices)
        device = ctx.device
        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        (gen_kind, generator, _), (_, discriminator, _) = gan_networks(cfg.model.family)
        self.generator = generator(self.gen_cfg).to(device)
        if cfg.model.init and not resume:
            self._init_generator(cfg.model.init, gen_kind)
        self.discriminator = discriminator(disc_cfg).to(device)
        self.pix2pix = cfg.model.family == "pix2pix"
        if self.pix2pix and cfg.train.targets is not None:
            raise ConfigError("train.targets: model.family pix2pix trains its task's one default target")
        task = self.data.task
        self.targets = [task.modalities.index(m) for m in trained_targets(cfg.train.targets, task)]
        self.inputs = torch.tensor([m in task.input_modalities for m in task.modalities])
        self.steps_per_batch = 1 if self.pix2pix else len(self.targets)  # optimizer steps
        if cfg.train.channels_last:
            self.generator.to(memory_format=torch.channels_last)
            self.discriminator.to(memory_format=torch.channels_last)
        self.global_batch = cfg.train.batch_size * ctx.world_size
        self.peak_lr = scaled_lr(cfg.optim.lr, self.global_batch, cfg.optim.reference_batch)
        betas = tuple(cfg.optim.betas)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.peak_lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.peak_lr * cfg.optim.d_lr_factor,
                                      betas=betas)
        self.batches = ShardedBatches(len(self.data.dataset), cfg.train.batch_size, ctx.rank, ctx.world_size,
                                      cfg.train.seed)
        self.total = total_steps(cfg, self.batches.steps_per_epoch)
        self.step = 0
        if resume:
            self._resume()
        self.update = self._make_update()
        self.log = CsvLog(self.out / "log.csv", self.step if resume else None) if ctx.is_main else None
        self.val_log = CsvLog(self.out / "validation.csv", self.step if resume else None) if ctx.is_main else None

    def _init_generator(self, path: str, kind: str) -> None:
        """Start from the weights of the generator checkpoint at `path` (its architecture must be this run's)."""
        source = load_model(path, kind=kind)
        if source.config != self.gen_cfg:
            raise ConfigError(f"model.init: {path} holds another architecture ({source.config}) than the run's "
                              f"({self.gen_cfg})")
        self.generator.load_state_dict(source.state_dict())

    def _make_update(self) -> GanUpdate | Pix2PixUpdate:
        cfg, ctx = self.cfg, self.ctx
        generator, discriminator = self._wrap(self.generator if self.pix2pix else FeatureGenerator(self.generator),
                                              self.discriminator)
        if self.pix2pix:
            target, inputs = single_target(self.data.task)
            return Pix2PixUpdate(Pix2PixModels(generator, discriminator, self.discriminator, self.opt_g, self.opt_d),
                                 cfg.loss, self._lr, cfg.optim.d_lr_factor, cfg.optim.grad_clip,
                                 self.gen_cfg.context_slices, self.data.fill, target, inputs, cfg.train.amp,
                                 cfg.train.channels_last)
        segmenter = load_segmenter(cfg, self.gen_cfg.num_modalities, ctx.device)
        models = GanModels(generator, discriminator, self.discriminator, segmenter, self.opt_g, self.opt_d)
        return GanUpdate(models, cfg.loss, self._lr, cfg.optim.d_lr_factor, cfg.optim.grad_clip,
                         self.gen_cfg.context_slices, self.data.fill, cfg.train.seed, ctx.rank,
                         cfg.train.random_subsets, cfg.train.amp, cfg.train.channels_last, self.gen_cfg.num_views > 0,
                         self.targets, self.inputs)

    def _lr(self, opt_step: int) -> float:
        total = self.total * self.steps_per_batch
        warmup = max(math.ceil(self.cfg.optim.warmup_fraction * total), 1)
        return warmup_cosine(opt_step, total, self.peak_lr, warmup, self.cfg.optim.min_lr_fraction)

    def _wrap(self, generator: torch.nn.Module, discriminator: torch.nn.Module
              ) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The networks as the update calls them: under DDP and torch.compile when configured."""
        if self.ctx.distributed:
            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            generator = DistributedDataParallel(generator, device_ids=ids)
            discriminator = DistributedDataParallel(discriminator, device_ids=ids)
        if self.cfg.train.compile:
            generator, discriminator = torch.compile(generator), torch.compile(discriminator)
        return generator, discriminator

    def _parts(self) -> dict[str, Stateful]:
        return {"generator": self.generator, "discriminator": self.discriminator, "opt_g": self.opt_g,
                "opt_d": self.opt_d}

    def _resume(self) -> None:
        self.step = restore_training(self.out, self._parts(), self.cfg.to_dict(), len(self.data.dataset),
                                     self.clock)

    def checkpoint(self) -> None:
        if self.ctx.is_main:
            save_training(self.out, self._parts(), self.step, self.cfg.to_dict(), len(self.data.dataset), self.clock,
                          epoch_position=list(self.batches.position(self.step)))
            plot_curves(self.out / "log.csv", self.out / "curves.png")

    def run_validation(self) -> None:
        cfg = self.cfg
        if self.ctx.is_main:
            plan = validation_plan(self.data.val_cases, self.data.task.target_modalities, cfg.run.validation_cases,
                                   cfg.run.validation_all_targets, cfg.data.split_seed)
            if plan:
                settings = engine_settings(self.generator, self.data.task, self.data.norms, cfg.data.views)
                metrics, samples = validate(self.generator, self.data.task, settings, plan, str(self.ctx.device),
                                            cfg.run.validation_batch_size, cfg.run.progress)
                self.val_log.append({"step": self.step, **metrics})
                plot_samples(samples, self.out / f"validation-{self.step}.png")
                plot_curves(self.out / "validation.csv", self.out / "validation-curves.png")
        barrier(self.ctx)

    def fit(self, stop_after: int | None = None) -> None:
        """Train up to the configured length (or `stop_after` steps in total), checkpointing on the way."""
        cfg, ctx = self.cfg, self.ctx
        stop = min(self.total, stop_after) if stop_after is not None else self.total
        self.batches.start, self.batches.stop = self.step, stop
        loader = make_loader(self.data.dataset, self.batches, cfg, ctx.device)
        bar = tqdm(total=stop, initial=self.step, desc="training", unit="step",
                   disable=not (ctx.is_main and cfg.run.progress))
        for batch in loader:
            batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
            logs = mean_over_ranks(self.update(batch, self.step), ctx)
            self.step += 1
            if self.log is not None:
                self.log.append({"step": self.step, **logs})
            bar.update()
            bar.set_postfix(l1=f"{logs.get('l1', math.nan):.3f}", g=f"{logs['g_total']:.3f}", lr=f"{logs['lr']:.2e}")
            if cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0 and self.step < stop:
                self.checkpoint()
            if cfg.run.validate_every and self.step % cfg.run.validate_every == 0 and self.step < self.total:
                self.run_validation()
        bar.close()
        self.checkpoint()
        if self.step == self.total:
            if cfg.run.validate_every:
                self.run_validation()
            self.write_models()

    def write_models(self, exported: bool = False) -> None:
        """The generator and discriminator in the models checkpoint format (rank 0).

        `exported`: written from a resumed state without training, so the time fields say so instead of
        timing this process."""
        if not self.ctx.is_main:
            return
        seconds = self.clock.seconds
        prov = provenance(self.cfg, self.data, self.step, self.global_batch, self.clock.started, seconds,
                          optimizer_steps=self.step * self.steps_per_batch)
        if exported:
            prov["time"] = {"exported": prov["time"]["finished"], "exported_at_step": self.step,
                            "planned_steps": self.total}
        for name, model in (("generator", self.generator), ("discriminator", self.discriminator)):
            meta = CheckpointMeta(kind=kind_of(model), task=self.data.task.name, modalities=self.data.modalities,
                                  normalization=self.data.norms, views=tuple(self.cfg.data.views), provenance=prov)
            save_checkpoint(model, self.out / name, meta)


def fit(cfg: Config, resume: bool = False, stop_after: int | None = None, export: bool = False) -> Path:
    """Run (or resume) GAN training as configured; returns the run folder.

    With `export`, train nothing: write the models checkpoints from the run's latest resumable state (their
    provenance records the step reached); the run can still be resumed afterwards.
    """
    ctx = init_distributed(cfg.run.device)
    try:
        run = GanRun(cfg, ctx, resume or export)
        if export:
            run.write_models(exported=True)
        else:
            run.fit(stop_after)
        return run.out
    finally:
        shutdown(ctx)
