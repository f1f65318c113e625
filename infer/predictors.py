"""Inference predictors by model family: each family's entry in `models.families` names one of these factories.

A factory takes the checkpoint folder, the task and the command line's `PredictorOptions` and returns an object
with `predict(volumes, target, timings)` that the runner drives: the slice engine (`infer.engine.slices`) for
slice generators, sliding windows for full-3D generators (`infer.engine.patches`), the 3D segmentation
predictor (`infer.engine.segmentation`), TISS-Net's joint synthesis and segmentation (`infer.engine.tissnet`).
A new family whose network runs like one of these reuses its factory; otherwise its factory goes here.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from conventions.tasks import TaskSpec
from infer.engine.patches import PatchVolumePredictor, patch_settings
from infer.engine.refine import NO_REFINER, load_refiner, refiner_path
from infer.engine.segmentation import SegmentationPredictor
from infer.engine.slices import Timings, VolumePredictor, resolve_settings
from infer.engine.tissnet import TissNetPredictor, checkpoint_target, tissnet_settings
from models.checkpoint import family_of, load_model, read_config
from models.families import resolve


class SetupError(Exception):
    """A problem that stops the whole run before any case (one line, exit status 2)."""


class Predictor(Protocol):
    def predict(self, volumes: dict[str, np.ndarray], target: str, timings: Timings | None = None) -> np.ndarray:
        ...


@dataclass(frozen=True)
class PredictorOptions:
    """The command line's say in how a checkpoint runs (None: the checkpoint's or the engine's default)."""

    device: torch.device
    views: tuple[str, ...] | None = None
    refine: str | None = None
    batch_size: int | None = None
    compile: bool = False
    precision: str = "auto"


def build_predictor(weights: Path, task: TaskSpec, options: PredictorOptions) -> Predictor:
    """The predictor of the family that `weights` (a checkpoint folder) belongs to."""
    config = read_config(weights)
    family = family_of(config)
    if family.predictor is None:
        raise SetupError(f"{weights}: a {family.name} checkpoint ({family.description}) is not run on its own")
    main_network = next(iter(family.networks))
    if config["kind"] != main_network:
        raise SetupError(f"{weights}: holds the {family.name} family's {config['kind']}, not its {main_network}")
    return resolve(family.predictor)(weights, task, options)


def _no_slice_options(options: PredictorOptions, what: str) -> None:
    if options.views or options.refine not in (None, NO_REFINER):
        raise SetupError(f"--views and --refine apply to slice generators, not to {what}")
    if options.precision == "bf16":
        raise SetupError(f"--precision bf16 applies to slice generators; {what} runs in float32")


def _synthesis_task(weights: Path, task: TaskSpec, what: str) -> None:
    if task.product is not None:
        raise SetupError(f"{weights}: {what} does not serve task {task.name}")


def slice_predictor(weights: Path, task: TaskSpec, options: PredictorOptions) -> VolumePredictor:
    """A slice generator (HF-GAN, Pix2Pix U-Net) on the task's views, with its 3D refiner when it has one."""
    _synthesis_task(weights, task, "a slice generator")
    model = load_model(weights, device=options.device)
    settings = resolve_settings(task, model, options.views)
    untrained = [v for v in settings.views if v not in model.meta.views]
    if model.meta.views and untrained:
        print(f"note: the checkpoint was trained on {', '.join(model.meta.views)}, not {', '.join(untrained)}",
              file=sys.stderr)
    refiner = refiner_path(options.refine, weights)
    refine = None if refiner is None else load_refiner(refiner, settings, options.device)
    return VolumePredictor(model, settings, batch_size=options.batch_size, device=options.device, refine=refine,
                           progress=True, compile=options.compile, precision=options.precision)


def patch_predictor(weights: Path, task: TaskSpec, options: PredictorOptions) -> PatchVolumePredictor:
    """A full-3D generator by overlapping windows."""
    _synthesis_task(weights, task, "a full-3D generator")
    _no_slice_options(options, "a full-3D generator")
    model = load_model(weights, device=options.device)
    return PatchVolumePredictor(model, patch_settings(task, model), batch_size=options.batch_size,
                                device=options.device)


def translation_predictor(weights: Path, task: TaskSpec, options: PredictorOptions
                          ) -> VolumePredictor | PatchVolumePredictor:
    """A generator of document 000's paired-translation families (`train.families.translation`): trained on slices (`spatial_dims` 2) it
    runs as a slice generator, on 3D patches (3) by overlapping windows."""
    arch = read_config(weights)["arch"]
    return (patch_predictor if arch.get("spatial_dims", 2) == 3 else slice_predictor)(weights, task, options)


def segmentation_predictor(weights: Path, task: TaskSpec, options: PredictorOptions) -> SegmentationPredictor:
    """A 3D tumour segmenter, for a task whose product is a segmentation."""
    if task.product is None:
        raise SetupError(f"{weights}: a segmenter does not serve task {task.name}")
    _no_slice_options(options, "a segmenter")
    return SegmentationPredictor(load_model(weights, device=options.device), device=options.device)


def tissnet_predictor(weights: Path, task: TaskSpec, options: PredictorOptions) -> TissNetPredictor:
    """TISS-Net: the target its checkpoint declares, with the fine whole-tumour mask
    (`predict_with_segmentation`)."""
    _synthesis_task(weights, task, "TISS-Net")
    _no_slice_options(options, "TISS-Net")
    model = load_model(weights, device=options.device)
    try:
        target = checkpoint_target(model, task)
    except ValueError as err:
        raise SetupError(f"{weights}: {err}") from None
    return TissNetPredictor(model, tissnet_settings(task, model), target, batch_size=options.batch_size,
                            device=options.device)
