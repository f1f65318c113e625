"""The training run shared by the paired-translation families of document 000 (CycleGAN, CUT, SynDiff): one
task target from its inputs, on 2D / 2.5D slices (`model.spatial_dims: 2`, the slice dataset of `train.run`)
or on random 3D patches (`spatial_dims: 3`, `train.volumetric.PatchSampler` on cached volumes), the family's
update step, an EMA copy of the generator, and the checkpoints.

A family supplies a `TranslationTrainer`: its networks (the generator first) and `step(pair, step, lr)`. The
run writes `config.yaml`, `log.csv` and `curves.png` (every loss term and the learning rate per step), and at
the end `generator/` (the EMA weights: the network inference runs; a 3D one records its sliding window) and one
folder per other network, named by its checkpoint kind. 2D + 3D refinement trains `python -m train refiner` on
the 2D generator; inference runs `python -m infer --weights run.output/generator` in every regime.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from monai.losses import SSIMLoss
from torch import nn
from tqdm.auto import tqdm

from conventions.tasks import TaskSpec
from infer.engine.patches import WINDOW_KEY
from models.checkpoint import CheckpointMeta, save_checkpoint
from train.config import ConfigError, DataConfig, PatchConfig, RunConfig
from train.curves import CsvLog, plot_curves
from train.data.cases import get_task
from train.data.sampler import ShardedBatches
from train.data.volumes import cache_volumes
from train.distributed import DistContext, init_distributed, shutdown
from train.gan_terms import EMAGenerator, edge_loss
from train.loop import single_target
from train.run import build_data, image_size, make_loader, normalization, now, prepare_output, training_cases
from train.schedule import set_lr, warmup_cosine
from train.volumetric import PatchSampler, window_settings


@dataclass
class TranslationModelConfig:
    """family: cyclegan, cut or syndiff. spatial_dims: 2 (slices; 2.5D with generator.context_slices) or 3
    (patches). generator / discriminator / backward (CycleGAN) / heads (CUT): keyword arguments of the family's
    network configs (`models.cyclegan`, `models.cut`, `models.syndiff`); the sizes the data sets are filled in."""

    family: str = "cyclegan"
    spatial_dims: int = 2
    generator: dict[str, Any] = field(default_factory=dict)
    discriminator: dict[str, Any] = field(default_factory=dict)
    backward: dict[str, Any] = field(default_factory=dict)
    heads: dict[str, Any] = field(default_factory=dict)


@dataclass
class TranslationLossConfig:
    """Weights (0 = off) and settings of the generator and discriminator terms (`train.gan_terms`). Paired
    term: l1, ssim, edge (on the target). adversarial: LSGAN (SynDiff: non-saturating); feature_matching on the
    discriminator's intermediate features; r1 (gamma) every r1_every steps. cycle / identity: CycleGAN. nce,
    nce_temperature, nce_locations: CUT's PatchNCE."""

    l1: float = 10.0
    ssim: float = 8.0
    edge: float = 2.0
    adversarial: float = 1.0
    feature_matching: float = 10.0
    r1: float = 10.0
    r1_every: int = 16
    cycle: float = 10.0
    identity: float = 5.0
    nce: float = 1.0
    nce_temperature: float = 0.07
    nce_locations: int = 256


@dataclass
class TranslationOptimConfig:
    """Adam (betas) for every network; warm-up over `warmup_steps`, then one cosine cycle to `min_lr_fraction`
    of `lr`; the discriminator(s) at `d_lr_factor` times the generator's rate; gradients clipped at
    `grad_clip` (0 = off)."""

    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    d_lr_factor: float = 1.0
    grad_clip: float = 1.0
    warmup_steps: int = 1000
    min_lr_fraction: float = 0.0


@dataclass
class TranslationTrainConfig:
    """steps: optimizer steps (batches), each on `batch_size` slices or patches; seed: weights and sampling;
    ema_decay: the EMA of the generator that is written as `generator/` (inference runs it)."""

    batch_size: int = 4
    steps: int = 20000
    seed: int = 0
    ema_decay: float = 0.999


@dataclass
class TranslationConfig:
    """A paired-translation configuration. `data` (slices) and, in 3D, `patch` (patch size and the sliding
    window; the normalised volumes are kept in `volumes/` under `data.cache_dir`, or under `run.output`)."""

    data: DataConfig = field(default_factory=DataConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)
    model: TranslationModelConfig = field(default_factory=TranslationModelConfig)
    loss: TranslationLossConfig = field(default_factory=TranslationLossConfig)
    optim: TranslationOptimConfig = field(default_factory=TranslationOptimConfig)
    train: TranslationTrainConfig = field(default_factory=TranslationTrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Pair:
    """One batch: x the generator input (every modality's slices or patches, all but the inputs filled with
    background), real (B, 1, ...) the target's centre slice or patch, source (B, n_inputs, ...) the inputs'
    centre slices or patches, fill the background value."""

    x: torch.Tensor
    real: torch.Tensor
    source: torch.Tensor
    fill: float


@dataclass(frozen=True)
class Sizes:
    """What the data fixes of the networks: modalities, input channels of the target (model order), the
    side of the samples, 2.5D context, spatial dims."""

    num_modalities: int
    inputs: tuple[int, ...]
    image_size: int
    context_slices: int
    spatial_dims: int


class TranslationTrainer(Protocol):
    """A family's part: `networks()` (checkpoint kind -> module, the generator first) and one update."""

    def networks(self) -> dict[str, nn.Module]:
        ...

    def step(self, pair: Pair, step: int, lr: float) -> dict[str, float]:
        ...


def network_config(config_cls: type, values: dict[str, Any], section: str, **fixed: Any) -> Any:
    """`config_cls(**values, **fixed)`; a bad key or value is a ConfigError naming `section`."""
    taken = sorted(set(values) & set(fixed))
    if taken:
        raise ConfigError(f"{section}.{taken[0]} is set by the data, not the config")
    try:
        return config_cls(**values, **fixed)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{section}: {err}") from None


def slice_pairs(cfg: TranslationConfig, ctx: DistContext, task: TaskSpec, target: int, inputs: list[int],
                context: int) -> tuple[Iterator[Pair], Any]:
    """`train.steps` batches of slices (2D or 2.5D) and the run's data (`train.run.RunData`)."""
    device = ctx.device
    data = build_data(cfg, ctx, context)
    batches = ShardedBatches(len(data.dataset), cfg.train.batch_size, 0, 1, cfg.train.seed, stop=cfg.train.steps)
    loader = make_loader(data.dataset, batches, cfg, device)
    per, fill = 2 * context + 1, data.fill
    hidden = [m for m in range(len(task.modalities)) if m not in inputs]

    def pairs() -> Iterator[Pair]:
        for batch in loader:
            image = batch["image"].to(device)
            centre = image[:, context::per]
            x = image.clone()
            for m in hidden:
                x[:, m * per:(m + 1) * per] = fill
            yield Pair(x, centre[:, target:target + 1], centre[:, inputs], fill)

    return pairs(), data


def patch_pairs(cfg: TranslationConfig, task: TaskSpec, target: int, inputs: list[int], out: Path,
                device: torch.device) -> tuple[Iterator[Pair], list[str], dict]:
    """Endless batches of random 3D patches, the training case names and the normalisation."""
    norms = normalization(cfg, task)
    fill = norms[task.modalities[0]].background
    train_cases, _ = training_cases(cfg, task)
    cases = cache_volumes(train_cases, task.modalities, norms, Path(cfg.data.cache_dir or out) / "volumes",
                          progress=cfg.run.progress)
    target_name = task.modalities[target]
    sampler = PatchSampler(cases, task.modalities, [target_name], cfg.patch.size, fill, cfg.train.seed,
                           with_synthesis=False, inputs=task.inputs_for(target_name))

    def pairs() -> Iterator[Pair]:
        while True:
            batch = sampler.sample(cfg.train.batch_size).to(device)
            yield Pair(batch.inputs, batch.reference, batch.inputs[:, inputs], fill)

    return pairs(), [c.name for c in cases], norms


def fit_translation(cfg: TranslationConfig, family: str,
                    make_trainer: Callable[[TranslationConfig, Sizes, torch.device], TranslationTrainer]) -> Path:
    """Train `family` as configured; returns the run folder."""
    if cfg.model.family != family:
        raise ConfigError(f"model.family is {cfg.model.family!r}, this trainer trains {family}")
    if cfg.model.spatial_dims not in (2, 3):
        raise ConfigError(f"model.spatial_dims must be 2 (slices) or 3 (patches), got {cfg.model.spatial_dims}")
    if (Path(cfg.run.output) / "generator").exists():
        raise FileExistsError(f"{Path(cfg.run.output) / 'generator'} exists already; choose another run.output")
    started, clock = now(), time.monotonic()
    task = get_task(cfg.data.task)
    target, inputs = single_target(task)
    ctx = init_distributed(cfg.run.device)
    try:
        if ctx.distributed:
            raise ConfigError(f"the {family} trainer runs in one process (not under torchrun)")
        device, three_d = ctx.device, cfg.model.spatial_dims == 3
        out = prepare_output(cfg, ctx, resume=False)
        context = 0 if three_d else int(cfg.model.generator.get("context_slices", 0))
        side = min(cfg.patch.size) if three_d else image_size(cfg)
        window = window_settings(cfg) if three_d else None
        sizes = Sizes(len(task.modalities), tuple(inputs), side, context, cfg.model.spatial_dims)
        torch.manual_seed(cfg.train.seed)
        trainer = make_trainer(cfg, sizes, device)
        networks = trainer.networks()
        generator = next(iter(networks.values()))
        if three_d:
            multiple = generator.config.side_multiple
            if any(s % multiple for s in cfg.patch.size):
                raise ConfigError(f"patch.size {cfg.patch.size}: every side must be a multiple of {multiple}")
            pairs, case_names, norms = patch_pairs(cfg, task, target, inputs, out, device)
            extra = {"train_cases": case_names, WINDOW_KEY: window.to_json()}
        else:
            pairs, data = slice_pairs(cfg, ctx, task, target, inputs, context)
            norms, extra = data.norms, {}
        ema = EMAGenerator(generator, cfg.train.ema_decay)
        log = CsvLog(out / "log.csv")
        total, warmup = cfg.train.steps, max(min(cfg.optim.warmup_steps, cfg.train.steps), 1)
        with tqdm(total=total, desc=family, unit="step", disable=not cfg.run.progress) as bar:
            for step, pair in zip(range(total), pairs):
                lr = warmup_cosine(step, total, cfg.optim.lr, warmup, cfg.optim.min_lr_fraction)
                logs = trainer.step(pair, step, lr)
                ema.update(generator)
                log.append({"step": step + 1, **logs, "lr": lr})
                bar.update()
        plot_curves(out / "log.csv", out / "curves.png")
        seconds = time.monotonic() - clock
        record = {"config": cfg.to_dict(), "steps": total, "target": task.modalities[target],
                  "time": {"started": started, "finished": now(), "train_seconds": round(seconds, 1)}, **extra}
        views = () if three_d else tuple(cfg.data.views)
        for index, (kind, network) in enumerate(networks.items()):
            module = ema.module if index == 0 else network
            meta = CheckpointMeta(kind=kind, task=task.name, modalities=task.modalities,
                                  normalization=norms, views=views, provenance=record)
            save_checkpoint(module, out / ("generator" if index == 0 else kind), meta)
        return out
    finally:
        shutdown(ctx)


def with_inputs(x: torch.Tensor, values: torch.Tensor, inputs: tuple[int, ...], context: int) -> torch.Tensor:
    """A copy of generator input `x` whose input modalities hold `values` (B, n_inputs, ...), each centre
    slice repeated over its 2k+1 context slices (a 3D patch: k = 0)."""
    per = 2 * context + 1
    out = x.clone()
    for j, m in enumerate(inputs):
        out[:, m * per:(m + 1) * per] = values[:, j:j + 1]
    return out


class PairedLoss(nn.Module):
    """The paired term: `l1` L1 + `ssim` (1 - SSIM, MONAI's, over the batch target's data range) + `edge` edge
    term (`train.gan_terms.edge_loss`), each only when its weight is not 0; returns the weighted total and each
    term."""

    def __init__(self, weights: TranslationLossConfig, spatial_dims: int) -> None:
        super().__init__()
        self.weights = weights
        self.ssim = SSIMLoss(spatial_dims=spatial_dims)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w, terms = self.weights, {}
        if w.l1:
            terms["l1"] = F.l1_loss(fake, real)
        if w.ssim:
            self.ssim.data_range = float((real.max() - real.min()).detach()) or 1.0
            terms["ssim"] = self.ssim(fake.float(), real.float())
        if w.edge:
            terms["edge"] = edge_loss(fake, real)
        total = sum(getattr(w, name) * value for name, value in terms.items())
        return total, terms


def adam(modules: list[nn.Module], optim: TranslationOptimConfig) -> torch.optim.Adam:
    return torch.optim.Adam([p for m in modules for p in m.parameters()], lr=optim.lr, betas=tuple(optim.betas))


def apply(optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float, grad_clip: float) -> None:
    """One step of `optimizer` on `loss` at rate `lr`, its parameters' gradients clipped at `grad_clip`."""
    set_lr(optimizer, lr)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    optimizer.step()


NOT_DUE = torch.tensor(float("nan"))
"""The logged value of a lazy term on a step it does not run (every row of the log has every column)."""


def floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """The logged values (one device sync)."""
    values = torch.stack([v.detach().float().cpu() for v in terms.values()]).tolist()
    return dict(zip(terms, values))
