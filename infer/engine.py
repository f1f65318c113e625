"""Volume synthesis engine: arrays in, arrays out (no file I/O), the same for every task.

Pipeline of `VolumePredictor.predict`: normalise the available inputs with the checkpoint's statistics (missing
ones filled with background) -> for each view: slice, add neighbouring-slice context (2.5D), pad to square,
run the slice generator in batches, crop, stack -> voxel-wise mean over the (distinct) views -> optional 3D
refinement hook -> denormalise to output units -> background where the inputs' majority vote says background.

Views are averaged in normalised space, so the refinement hook sees the multi-view volume; denormalisation is
affine apart from its clamp at 0, so this equals averaging the denormalised views wherever neither is clamped.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from infer.geometry import crop_from_square, from_slices, pad_to_square, to_slices, with_context
from infer.intensity import background_vote, denormalize, foreground, normalize
from infer.tasks import VIEWS, TaskSpec, ZScoreNorm

Refiner = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
"""3D refinement hook: refine(synthesis (X, Y, Z), inputs (M, X, Y, Z), target index) -> synthesis (X, Y, Z).

All arrays are normalised (missing inputs filled with background); it runs after the views are averaged and
before denormalisation.
"""

LARGE_CASE_BATCHES = 32
"""A case needing at least this many slice batches gets its own progress bar."""


@dataclass(frozen=True)
class EngineSettings:
    """What the engine needs to know besides the network itself.

    modalities: model channel order. normalization: statistics per modality. views: distinct views to average.
    image_size: the generator's square input side. context_slices: k of 2.5D (0 = 2D). view_embedding: whether
    the generator takes the view index. output_offset / output_background: see `infer.tasks.TaskSpec`.
    """

    modalities: tuple[str, ...]
    normalization: Mapping[str, ZScoreNorm]
    views: tuple[str, ...]
    image_size: int
    context_slices: int = 0
    view_embedding: bool = False
    output_offset: float = 0.0
    output_background: float = 0.0

    def __post_init__(self) -> None:
        if not self.views or len(set(self.views)) != len(self.views):
            raise ValueError(f"views must be distinct and at least one, got {list(self.views)}")
        unknown = [v for v in self.views if v not in VIEWS]
        if unknown:
            raise ValueError(f"unknown view(s) {', '.join(unknown)}; known: {', '.join(VIEWS)}")
        lacking = [m for m in self.modalities if m not in self.normalization]
        if lacking:
            raise ValueError(f"no normalisation statistics for {', '.join(lacking)}")
        if len({self.normalization[m].background for m in self.modalities}) != 1:
            raise ValueError("all modalities must share one normalised background value")

    @property
    def fill(self) -> float:
        """Normalised background: the value of missing inputs, padding and out-of-volume context slices."""
        return self.normalization[self.modalities[0]].background


def resolve_settings(task: TaskSpec, model: nn.Module, views: Sequence[str] | None = None) -> EngineSettings:
    """Settings for `model` (with `.config` and `.meta`) on `task`.

    The checkpoint's views and normalisation override the task's defaults; `views`, when given, overrides both.
    """
    config, meta = model.config, model.meta
    if meta.task != task.name:
        raise ValueError(f"the checkpoint is for task {meta.task!r}, not {task.name!r}")
    if sorted(meta.modalities) != sorted(task.modalities) or len(meta.modalities) != config.num_modalities:
        raise ValueError(f"the checkpoint's modalities {list(meta.modalities)} do not match task {task.name!r} "
                         f"({list(task.modalities)})")
    settings = EngineSettings(
        modalities=tuple(meta.modalities),
        normalization={**task.normalization, **meta.normalization},
        views=tuple(views or meta.views or task.default_views),
        image_size=config.image_size,
        context_slices=config.context_slices,
        view_embedding=config.num_views > 0,
        output_offset=task.output_offset,
        output_background=task.output_background,
    )
    if settings.view_embedding:
        beyond = [v for v in settings.views if VIEWS.index(v) >= config.num_views]
        if beyond:
            raise ValueError(f"the checkpoint's view embedding knows {config.num_views} view(s) "
                             f"({', '.join(VIEWS[:config.num_views])}), not {', '.join(beyond)}")
    return settings


def normalize_inputs(volumes: Mapping[str, np.ndarray], settings: EngineSettings) -> tuple[np.ndarray, np.ndarray]:
    """(M, X, Y, Z) float32 model-order inputs (missing ones filled with background) and the (M,) availability."""
    unknown = set(volumes) - set(settings.modalities)
    if unknown:
        raise ValueError(f"unknown modalities {', '.join(sorted(unknown))}")
    shapes = {v.shape for v in volumes.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"the inputs must be 3D volumes of one shape, got {sorted(shapes)}")
    shape = next(iter(shapes))
    inputs = np.full((len(settings.modalities), *shape), settings.fill, dtype=np.float32)
    for i, modality in enumerate(settings.modalities):
        if modality in volumes:
            inputs[i] = normalize(volumes[modality], settings.normalization[modality])
    available = np.array([m in volumes for m in settings.modalities])
    return inputs, available


def to_output(synthesis: np.ndarray, background: np.ndarray, norm: ZScoreNorm, settings: EngineSettings) -> np.ndarray:
    """Normalised synthesis -> output units (denormalised + offset), `output_background` where `background`."""
    out = denormalize(synthesis, norm)
    out += np.float32(settings.output_offset)
    out[background] = settings.output_background
    return out


class VolumePredictor:
    """Synthesises a missing volume from the available ones with a slice generator.

    model(x, available, target, view) -> (B, 1, S, S) as in `models.generator.HFGANGenerator`; it is put in
    eval() and run under torch.inference_mode, with bf16 autocast on a GPU only.
    """

    def __init__(self, model: nn.Module, settings: EngineSettings, batch_size: int = 8,
                 device: str | torch.device = "cpu", refine: Refiner | None = None, progress: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.settings = settings
        self.batch_size = batch_size
        self.refine = refine
        self.progress = progress

    def predict(self, volumes: Mapping[str, np.ndarray], target: str) -> np.ndarray:
        """The `target` volume in output units (float32), from raw input `volumes` keyed by modality."""
        settings = self.settings
        if target not in settings.modalities or target in volumes:
            raise ValueError(f"cannot synthesise {target!r} from {', '.join(volumes)}")
        inputs, available = normalize_inputs(volumes, settings)
        target_index = settings.modalities.index(target)
        stacks = {view: to_slices(inputs, view) for view in settings.views}  # (N, M, H, W) each, no copy
        too_large = [f"{view} slices of {s.shape[2]}x{s.shape[3]}" for view, s in stacks.items()
                     if max(s.shape[2:]) > settings.image_size]
        if too_large:
            raise ValueError(f"{', '.join(too_large)} exceed the model's {settings.image_size}x{settings.image_size} "
                             "input (sliding windows are not supported yet)")
        n_batches = sum(math.ceil(len(s) / self.batch_size) for s in stacks.values())
        with tqdm(total=n_batches, desc="slice batches", unit="batch", leave=False,
                  disable=not self.progress or n_batches < LARGE_CASE_BATCHES) as bar:
            views = [from_slices(self.predict_slices(s, available, target_index, view, bar.update), view)
                     for view, s in stacks.items()]
        synthesis = np.mean(views, axis=0, dtype=np.float32)
        if self.refine is not None:
            synthesis = self.refine(synthesis, inputs, target_index)
        background = background_vote([foreground(volumes[m]) for m in settings.modalities if m in volumes])
        return to_output(synthesis, background, settings.normalization[target], settings)

    def predict_slices(self, slices: np.ndarray, available: np.ndarray, target: int, view: str,
                       on_batch: Callable[[], object] = lambda: None) -> np.ndarray:
        """Normalised synthesis (N, H, W) from normalised input slices (N, M, H, W) of `view`, in batches."""
        settings = self.settings
        out = np.empty((len(slices), *slices.shape[2:]), dtype=np.float32)
        for start in range(0, len(slices), self.batch_size):
            index = np.arange(start, min(start + self.batch_size, len(slices)))
            x = with_context(slices, index, settings.context_slices, settings.fill)
            y = self._run_model(pad_to_square(x, settings.image_size, settings.fill), available, target, view)
            out[index] = crop_from_square(y[:, 0], out.shape[1:])
            on_batch()
        return out

    def _run_model(self, x: np.ndarray, available: np.ndarray, target: int, view: str) -> np.ndarray:
        b = len(x)
        device = self.device
        available_t = torch.from_numpy(available).to(device).expand(b, -1)
        target_t = torch.full((b,), target, dtype=torch.long, device=device)
        view_t = None
        if self.settings.view_embedding:
            view_t = torch.full((b,), VIEWS.index(view), dtype=torch.long, device=device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        with torch.inference_mode(), autocast:
            y = self.model(torch.from_numpy(x).to(device), available_t, target_t, view_t)
        return y.float().cpu().numpy()
