"""What every training command shares: statistics, the case split, the slice dataset, the loader, the output
folder and the provenance a checkpoint records."""
from __future__ import annotations

import datetime
import math
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from infer.engine.cases import read_split
from conventions.normalization import Normalization, norm_to_json
from conventions.tasks import VIEWS, TaskSpec
from train.data.cache import load_slabs
from train.data.cases import TrainCase, find_cases, get_task, split_cases
from train.config import Config, ConfigError
from train.distributed import DistContext, barrier
from train.data.sampler import ShardedBatches
from train.data.slices import SliceDataset
from train.data.stats import load_stats


@dataclass
class RunData:
    task: TaskSpec
    norms: dict[str, Normalization]
    train_cases: list[TrainCase]
    val_cases: list[TrainCase]
    dataset: SliceDataset

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.task.modalities

    @property
    def fill(self) -> float:
        return self.norms[self.modalities[0]].background


NORMALIZATION_CHOICES: tuple[str, ...] = ("dataset", "case")


def normalization(cfg: Config, task: TaskSpec) -> dict[str, Normalization]:
    """`data.normalization`: "case" = the task's per-case normalisation; "dataset" = `data.stats` when given,
    else the task's published statistics."""
    choice = cfg.data.normalization
    if choice not in NORMALIZATION_CHOICES:
        raise ConfigError(f"data.normalization must be one of {', '.join(NORMALIZATION_CHOICES)}, got {choice!r}")
    if choice == "case":
        if cfg.data.stats:
            raise ConfigError("data.stats is for data.normalization: dataset, not case")
        if not task.case_normalization:
            raise ConfigError(f"task {task.name} has no per-case normalisation")
        return dict(task.case_normalization)
    return load_stats(cfg.data.stats, task.modalities) if cfg.data.stats else dict(task.normalization)


def image_size(cfg: Config) -> int:
    """Side of the training samples, and so of the networks' input: `data.crop`, else `data.slice_size`."""
    size = cfg.data.crop or cfg.data.slice_size
    if size > cfg.data.slice_size:
        raise ConfigError(f"data.crop {size} exceeds data.slice_size {cfg.data.slice_size}")
    return size


def training_cases(cfg: Config, task: TaskSpec) -> tuple[list[TrainCase], list[TrainCase]]:
    """(train, validation) cases; with `data.require_seg`, training cases without a segmentation are dropped."""
    val_names = read_split(cfg.data.split)[1] if cfg.data.split else cfg.data.val_cases
    train_cases, val_cases = split_cases(find_cases(cfg.data.roots, task), cfg.data.val_fraction, val_names,
                                         cfg.data.split_seed)
    if cfg.data.require_seg:
        unlabelled = [c.name for c in train_cases if c.seg is None]
        if unlabelled:
            warnings.warn(f"skipped {len(unlabelled)} training case(s) without a segmentation: "
                          f"{', '.join(unlabelled[:5])}", stacklevel=2)
        train_cases = [c for c in train_cases if c.seg is not None]
    if not train_cases:
        raise ValueError("no training case left after the split")
    return train_cases, val_cases


def build_data(cfg: Config, ctx: DistContext, context: int) -> RunData:
    """Split the cases, prepare their slices (rank 0 fills a disk cache first) and build the dataset."""
    unknown = [v for v in cfg.data.views if v not in VIEWS]
    if unknown or not cfg.data.views:
        raise ConfigError(f"data.views must be among {', '.join(VIEWS)}, got {cfg.data.views}")
    task = get_task(cfg.data.task)
    norms = normalization(cfg, task)
    train_cases, val_cases = training_cases(cfg, task)

    def slabs() -> list:
        return load_slabs(train_cases, task.modalities, norms, cfg.data.views, cfg.data.cache_dir,
                          progress=cfg.run.progress and ctx.is_main)

    if cfg.data.cache_dir is not None and ctx.distributed:
        if ctx.is_main:
            slabs()
        barrier(ctx)
    min_tumour_pixels = math.ceil(cfg.data.min_tumour_fraction * cfg.data.slice_size ** 2)
    dataset = SliceDataset(slabs(), context, cfg.data.slice_size, norms[task.modalities[0]].background,
                           cfg.data.min_brain_pixels, min_tumour_pixels, cfg.data.crop, cfg.train.seed)
    return RunData(task, norms, train_cases, val_cases, dataset)


def total_steps(cfg: Config, steps_per_epoch: int) -> int:
    return cfg.train.max_steps if cfg.train.max_steps is not None else cfg.train.epochs * steps_per_epoch


def make_loader(dataset: SliceDataset, batches: ShardedBatches, cfg: Config, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, num_workers=cfg.run.num_workers,
                      pin_memory=device.type == "cuda")


def prepare_output(cfg: Config, ctx: DistContext, resume: bool) -> Path:
    """The run folder with the resolved config written in it (rank 0). A fresh run refuses a folder that
    already holds a training state."""
    out = Path(cfg.run.output)
    if ctx.is_main:
        if not resume and (out / "state.pt").exists():
            raise FileExistsError(f"{out} already holds a run; pass --resume or choose another run.output")
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    barrier(ctx)
    return out


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def provenance(cfg: Config, data: RunData, steps: int, global_batch: int, started: str, seconds: float,
               **extra: Any) -> dict[str, Any]:
    """What a final checkpoint records about how it was trained."""
    return {"config": cfg.to_dict(), "steps": steps, "global_batch": global_batch,
            "data": {"roots": list(cfg.data.roots), "views": list(cfg.data.views),
                     "train_cases": len(data.train_cases), "train_slices": len(data.dataset),
                     "val_cases": [c.name for c in data.val_cases],
                     "normalization": {m: norm_to_json(n) for m, n in data.norms.items()}},
            "time": {"started": started, "finished": now(), "train_seconds": round(seconds, 1)},
            "software": {"torch": torch.__version__, "python": platform.python_version()}, **extra}
