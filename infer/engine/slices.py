"""Volume synthesis engine: arrays in, arrays out (no file I/O), the same for every task.

Pipeline of `VolumePredictor.predict`: normalise the available inputs with the checkpoint's statistics (missing
ones filled with background) and move them to the device once (pinned memory, non-blocking on a GPU) -> for
each view: a padded stack of its slices on the device (square padding, plus k background slices at each end
for the 2.5D context), batches gathered from it by indexing, the slice generator (bf16 autocast by `--precision`,
channels-last input on a GPU), crop -> voxel-wise mean over the (distinct) views, copied back to the host once ->
optional 3D refinement hook -> denormalise to output units -> background where the inputs' majority vote says
background. Arrays are float32 throughout (the generator's output is cast to float32 at once).

Slices whose every voxel the vote calls background are not computed (`needed_slices`): they are filled with the
normalised background, which the output overwrites with `output_background` anyway, so the output is the same
as computing them (bit for bit at batch size 1; re-batching moves float32 results by about 1e-6). With a
refinement hook, the slices it reads (the bounding box of the inputs' signal) are computed too, so it sees the
same synthesis as without skipping.

Views are averaged in normalised space, so the refinement hook sees the multi-view volume; denormalisation is
affine apart from its clamp at 0, so this equals averaging the denormalised views wherever neither is clamped.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn
from tqdm.auto import tqdm

from conventions.normalization import Normalization
from conventions.tasks import VIEWS, TaskSpec
from infer.engine.geometry import bounding_box, crop_from_square, in_plane_shape, pad_amounts, signal_box, view_axis
from infer.engine.intensity import background_vote, denormalize, foreground, normalize
from infer.engine.precision import resolve_precision

Refiner = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
"""3D refinement hook: refine(synthesis (X, Y, Z), inputs (M, X, Y, Z), target index) -> synthesis (X, Y, Z).

All arrays are normalised (missing inputs filled with background); it runs after the views are averaged and
before denormalisation. It may read the synthesis inside the `signal_box` of the inputs only (and must leave it
as it is outside), as `infer.engine.refine.SlidingWindowRefiner` does.
"""

Timings = dict[str, float]
"""Wall seconds per pipeline stage of one case (see `infer.engine.runner.STAGES`)."""

LARGE_CASE_BATCHES = 32
"""A case needing at least this many slice batches gets its own progress bar."""

CPU_BATCH_SIZE = 8
"""Slices per forward pass on a CPU unless told otherwise (on a GPU the default follows the free memory)."""

GPU_BATCH_LIMIT = 32
GPU_MEMORY_SHARE = 0.5
"""The default GPU batch fills at most this share of the free GPU memory, and holds at most GPU_BATCH_LIMIT."""


@contextmanager
def timed(timings: Timings | None, stage: str, device: torch.device | None = None) -> Iterator[None]:
    """Add the wall time of the block to `timings[stage]` (nothing when `timings` is None); on a GPU, first
    wait for the work the block queued, so that it counts in this stage."""
    if timings is None:
        yield
        return
    start = time.perf_counter()
    yield
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def batch_size_for_memory(free_bytes: int, bytes_per_slice: int, limit: int = GPU_BATCH_LIMIT) -> int:
    """Slices per forward pass that fit in `GPU_MEMORY_SHARE` of `free_bytes` at `bytes_per_slice` each
    (1 to `limit`)."""
    return max(1, min(limit, int(free_bytes * GPU_MEMORY_SHARE) // max(bytes_per_slice, 1)))


@dataclass(frozen=True)
class EngineSettings:
    """What the engine needs to know besides the network itself.

    modalities: model channel order. normalization: statistics per modality. views: distinct views to average.
    image_size: the generator's square input side. context_slices: k of 2.5D (0 = 2D). view_embedding: whether
    the generator takes the view index. output_offset / output_background / output_floor / window_overlap /
    crop_to: see
    `conventions.tasks.TaskSpec`.
    """

    modalities: tuple[str, ...]
    normalization: Mapping[str, Normalization]
    views: tuple[str, ...]
    image_size: int
    context_slices: int = 0
    view_embedding: bool = False
    output_offset: float = 0.0
    output_background: float = 0.0
    output_floor: float | None = None
    window_overlap: float | None = None
    crop_to: str | None = None

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


def check_task(task: TaskSpec, model: nn.Module) -> None:
    """ValueError unless `model` (with `.config` and `.meta`) was trained for `task` and its modalities."""
    config, meta = model.config, model.meta
    if meta.task != task.name:
        raise ValueError(f"the checkpoint is for task {meta.task!r}, not {task.name!r}")
    if sorted(meta.modalities) != sorted(task.modalities) or len(meta.modalities) != config.num_modalities:
        raise ValueError(f"the checkpoint's modalities {list(meta.modalities)} do not match task {task.name!r} "
                         f"({list(task.modalities)})")


def resolve_settings(task: TaskSpec, model: nn.Module, views: Sequence[str] | None = None) -> EngineSettings:
    """Settings for `model` (with `.config` and `.meta`) on `task`.

    The checkpoint's views and normalisation override the task's defaults; `views`, when given, overrides both.
    """
    check_task(task, model)
    config, meta = model.config, model.meta
    settings = EngineSettings(
        modalities=tuple(meta.modalities),
        normalization={**task.normalization, **meta.normalization},
        views=tuple(views or meta.views or task.default_views),
        image_size=config.image_size,
        context_slices=config.context_slices,
        view_embedding=config.num_views > 0,
        output_offset=task.output_offset,
        output_background=task.output_background,
        output_floor=task.output_floor,
        window_overlap=task.window_overlap,
        crop_to=task.crop_to,
    )
    if settings.view_embedding:
        beyond = [v for v in settings.views if VIEWS.index(v) >= config.num_views]
        if beyond:
            raise ValueError(f"the checkpoint's view embedding knows {config.num_views} view(s) "
                             f"({', '.join(VIEWS[:config.num_views])}), not {', '.join(beyond)}")
    return settings


def normalize_inputs(volumes: Mapping[str, np.ndarray], settings: EngineSettings,
                     foregrounds: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(M, X, Y, Z) float32 model-order inputs (missing ones filled with background) and the (M,) availability;
    `foregrounds` (from `input_foregrounds`) saves computing the masks again."""
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
            mask = foregrounds[modality] if foregrounds is not None else None
            inputs[i] = normalize(volumes[modality], settings.normalization[modality], mask)
    available = np.array([m in volumes for m in settings.modalities])
    return inputs, available


def input_foregrounds(volumes: Mapping[str, np.ndarray], settings: EngineSettings) -> dict[str, np.ndarray]:
    """Each input's foreground under its normalisation, in model order; the output's background is their
    `background_vote`."""
    return {m: foreground(volumes[m], settings.normalization[m]) for m in settings.modalities if m in volumes}


def to_output(synthesis: np.ndarray, background: np.ndarray, norm: Normalization,
              settings: EngineSettings) -> np.ndarray:
    """Normalised synthesis -> output units (denormalised + offset), `output_background` where `background`,
    at least `output_floor` elsewhere."""
    out = denormalize(synthesis, norm)
    out += np.float32(settings.output_offset)
    if settings.output_floor is not None:
        np.maximum(out, np.float32(settings.output_floor), out=out)
    out[background] = settings.output_background
    return out


def padded_stack(volume: torch.Tensor, view: str, size: int, k: int, fill: float) -> torch.Tensor:
    """The slices of `view` through float32 `volume` (M, X, Y, Z), each side padded to at least `size` by the
    `pad_amounts` rule, with k `fill` slices added at each end: (N + 2k, M, max(size, H), max(size, W)), one
    copy, on the volume's device."""
    slices = volume.movedim(1 + view_axis(view), 0)  # (N, M, H, W), a view
    n, m, h, w = slices.shape
    side_h, side_w = max(size, h), max(size, w)
    (top, _), (left, _) = pad_amounts(h, side_h), pad_amounts(w, side_w)
    shape = (n + 2 * k, m, side_h, side_w)
    inside = (slice(k, k + n), slice(None), slice(top, top + h), slice(left, left + w))
    if volume.device.type == "cpu":  # numpy fills and copies (transposed strides) several times faster here
        host = np.full(shape, fill, dtype=np.float32)
        host[inside] = slices.numpy()
        return torch.from_numpy(host)
    stack = torch.full(shape, fill, dtype=volume.dtype, device=volume.device)
    stack[inside] = slices
    return stack


def needed_slices(background: np.ndarray, view: str, reads: tuple[slice, slice, slice] | None = None) -> np.ndarray:
    """Ascending indices of the slices of `view` through an (X, Y, Z) volume that hold a voxel outside the
    output's `background`, or that cross the box `reads` (the voxels a refinement hook reads)."""
    axis = view_axis(view)
    needed = (~background).any(axis=tuple(a for a in range(3) if a != axis))
    if reads is not None:
        needed[reads[axis]] = True
    return np.flatnonzero(needed)


def batch_input(stack: torch.Tensor, indices: np.ndarray, k: int,
                memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Generator input (B, M*(2k+1), S, S) for the slices `indices` (ascending) of a `padded_stack`, in
    `memory_format` (a view of `stack`, no copy, for consecutive 2D slices in the contiguous format).

    Channels are modality-major, as `infer.engine.geometry.with_context` orders them: modality m's slices i-k .. i+k
    are channels m*(2k+1) .. m*(2k+1)+2k.
    """
    first, last = int(indices[0]), int(indices[-1])
    if last - first + 1 == len(indices):  # consecutive: (B, M, S, S, 2k+1), window[b, ..., j] = slice first+b+j
        window = stack[first:last + 1 + 2 * k].unfold(0, 2 * k + 1, 1)
    else:
        window = stack.unfold(0, 2 * k + 1, 1)[torch.as_tensor(indices, device=stack.device)]
    return window.movedim(-1, 2).flatten(1, 2).contiguous(memory_format=memory_format)


class VolumePredictor:
    """Synthesises a missing volume from the available ones with a slice generator.

    model(x, available, target, view) -> (B, 1, S, S) as in `models.generator.HFGANGenerator`; it is put in
    eval() and run under torch.inference_mode, with channels-last input on a GPU only (on a CPU, PyTorch's
    channels-last GroupNorm loses float32 precision on near-constant inputs).
    batch_size: slices per forward pass; by default `CPU_BATCH_SIZE` on a CPU, and on a GPU as many as fit in
    `GPU_MEMORY_SHARE` of the free memory (measured with one slice). compile: run the model through
    torch.compile (the first batches of each shape pay for the compilation). precision: "auto", "fp32" or
    "bf16" (`infer.engine.precision`); `self.precision` is the one that runs. skip_background: leave out the slices
    whose output is all background (see the module's docstring).
    """

    def __init__(self, model: nn.Module, settings: EngineSettings, batch_size: int | None = None,
                 device: str | torch.device = "cpu", refine: Refiner | None = None, progress: bool = False,
                 compile: bool = False, precision: str = "auto", skip_background: bool = True) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.skip_background = skip_background
        self.model = model.to(self.device).eval()
        on_gpu = self.device.type == "cuda"
        self.memory_format = torch.channels_last if on_gpu else torch.contiguous_format
        self.forward: Callable[..., torch.Tensor] = self.model
        self.settings = settings
        self.refine = refine
        self.progress = progress
        if batch_size is None:
            batch_size = self._gpu_batch_size() if on_gpu else CPU_BATCH_SIZE
        self.batch_size = batch_size
        if compile:
            self.forward = torch.compile(self.model)

    @torch.inference_mode()
    def predict(self, volumes: Mapping[str, np.ndarray], target: str, timings: Timings | None = None) -> np.ndarray:
        """The `target` volume in output units (float32), from raw input `volumes` keyed by modality.

        With `settings.crop_to`, only the bounding box of that input's foreground is synthesised; the rest of
        the output is `output_background`.
        timings: when given, the seconds of "preprocess", "forward" and "postprocess" are added to it.
        """
        crop = self.settings.crop_to
        if crop is None:
            return self._predict(volumes, target, timings)
        if crop not in volumes:
            raise ValueError(f"cannot crop to {crop!r}: it is not among the inputs ({', '.join(volumes)})")
        with timed(timings, "preprocess"):
            box = bounding_box(foreground(volumes[crop], self.settings.normalization[crop]))
        inside = self._predict({m: v[box] for m, v in volumes.items()}, target, timings)
        with timed(timings, "postprocess"):
            out = np.full(volumes[crop].shape, self.settings.output_background, dtype=np.float32)
            out[box] = inside
        return out

    def _predict(self, volumes: Mapping[str, np.ndarray], target: str, timings: Timings | None) -> np.ndarray:
        """`predict` on volumes as given."""
        settings, device = self.settings, self.device
        if target not in settings.modalities or target in volumes:
            raise ValueError(f"cannot synthesise {target!r} from {', '.join(volumes)}")
        target_index = settings.modalities.index(target)
        with timed(timings, "preprocess", device):
            foregrounds = input_foregrounds(volumes, settings)
            inputs, available = normalize_inputs(volumes, settings, foregrounds)
            shape = inputs.shape[1:]
            self._check_fits(shape)
            background = background_vote(list(foregrounds.values()))
            needed = self._slices_to_compute(background, inputs)
            volume = self._to_device(inputs)
            available_t = torch.from_numpy(available).to(device)
            synthesis = torch.zeros(shape, dtype=torch.float32, device=device)
        n_batches = sum(math.ceil(len(indices) / self.batch_size) for indices in needed.values())
        with tqdm(total=n_batches, desc="slice batches", unit="batch", leave=False,
                  disable=not self.progress or n_batches < LARGE_CASE_BATCHES) as bar:
            for view in settings.views:
                with timed(timings, "preprocess", device):
                    stack = padded_stack(volume, view, settings.image_size, settings.context_slices, settings.fill)
                with timed(timings, "forward", device):
                    slices = self._generate_view(stack, needed[view], available_t, target_index, view, bar.update)
                with timed(timings, "postprocess", device):
                    synthesis += crop_from_square(slices, in_plane_shape(shape, view)).movedim(0, view_axis(view))
                del stack, slices
        with timed(timings, "postprocess", device):
            synthesis /= len(settings.views)
            result = self._to_host(synthesis)
            if self.refine is not None:
                result = self.refine(result, inputs, target_index)
            return to_output(result, background, settings.normalization[target], settings)

    def _slices_to_compute(self, background: np.ndarray, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Per view, the slices to compute: all of them without `skip_background`, else `needed_slices` (with
        the refinement hook's `signal_box` when there is a hook)."""
        views = self.settings.views
        if not self.skip_background:
            return {view: np.arange(background.shape[view_axis(view)]) for view in views}
        reads = None if self.refine is None else signal_box(inputs, self.settings.fill)
        return {view: needed_slices(background, view, reads) for view in views}

    def _check_fits(self, shape: tuple[int, int, int]) -> None:
        """ValueError when the slices of some view through a volume of `shape` exceed the model's input and the
        task has no sliding windows."""
        size = self.settings.image_size
        if self.settings.window_overlap is not None:
            return
        planes = {view: in_plane_shape(shape, view) for view in self.settings.views}
        too_large = [f"{view} slices of {h}x{w}" for view, (h, w) in planes.items() if max(h, w) > size]
        if too_large:
            raise ValueError(f"{', '.join(too_large)} exceed the model's {size}x{size} input "
                             "(this task has no sliding windows)")

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """`array` on the device: shared, not copied, on a CPU; through pinned memory, non-blocking, on a GPU."""
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def _to_host(self, tensor: torch.Tensor) -> np.ndarray:
        """`tensor` as a numpy array: shared on a CPU; one non-blocking copy into pinned memory from a GPU."""
        if self.device.type != "cuda":
            return tensor.cpu().numpy()
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return host.numpy()

    def _generate_view(self, stack: torch.Tensor, indices: np.ndarray, available: torch.Tensor, target: int,
                       view: str, on_batch: Callable[[], object]) -> torch.Tensor:
        """Normalised synthesis (N, S, S) of the slices `indices` of a `padded_stack` of `view`, in batches; the
        other slices hold the normalised background."""
        k = self.settings.context_slices
        n = len(stack) - 2 * k
        out = torch.full((n, *stack.shape[2:]), self.settings.fill, dtype=torch.float32, device=stack.device)
        for start in range(0, len(indices), self.batch_size):
            batch = indices[start:start + self.batch_size]
            x = batch_input(stack, batch, k, self.memory_format)
            out[torch.as_tensor(batch, device=stack.device)] = self._windows(x, available, target, view)[:, 0]
            on_batch()
        return out

    def _windows(self, x: torch.Tensor, available: torch.Tensor, target: int, view: str) -> torch.Tensor:
        """The generator on slices `x` of the model's input size, or on slices larger than that through
        MONAI's sliding windows (input-size windows, the task's overlap, Gaussian blending)."""
        size = self.settings.image_size
        if x.shape[-2:] == (size, size):
            return self._generate(x, available, target, view)
        return sliding_window_inference(x, (size, size), self.batch_size, self._generate, self.settings.window_overlap,
                                        mode="gaussian", padding_mode="constant", cval=self.settings.fill,
                                        available=available, target=target, view=view)

    def _generate(self, x: torch.Tensor, available: torch.Tensor, target: int, view: str) -> torch.Tensor:
        """The generator on one batch `x` (float32 out, whatever the precision); `available` is the (M,) mask of
        the case."""
        b, device = len(x), x.device
        target_t = torch.full((b,), target, dtype=torch.long, device=device)
        view_t = None
        if self.settings.view_embedding:
            view_t = torch.full((b,), VIEWS.index(view), dtype=torch.long, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.forward(x, available.expand(b, -1), target_t, view_t)
        return out.float()

    @torch.inference_mode()
    def _gpu_batch_size(self) -> int:
        """Measure the peak memory of one slice through the model, then `batch_size_for_memory`."""
        settings, device = self.settings, self.device
        channels = len(settings.modalities) * (2 * settings.context_slices + 1)
        x = torch.full((1, channels, settings.image_size, settings.image_size), settings.fill, device=device)
        available = torch.arange(len(settings.modalities), device=device) > 0  # all but the target, modality 0
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        self._generate(x.contiguous(memory_format=self.memory_format), available, 0, settings.views[0])
        torch.cuda.synchronize(device)
        free, _ = torch.cuda.mem_get_info(device)
        return batch_size_for_memory(free, torch.cuda.max_memory_allocated(device) - before)
