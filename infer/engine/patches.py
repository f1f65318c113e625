"""Sliding-window 3D inference, shared by the 3D refiner and the full-3D generator.

One pass of MONAI's `sliding_window_inference` over the bounding box of the voxels where some input has signal
(outside it every input is background, so the engine's background vote blanks the output there anyway), with
overlapping windows blended by a Gaussian (or constant) weight; a volume smaller than a window is padded with
the normalised background. The window settings travel with a checkpoint as `provenance["sliding_window"]`.

`PatchVolumePredictor` runs a full-3D generator checkpoint (kind "generator3d") behind the interface of
`infer.engine.slices.VolumePredictor` (`predict(volumes, target, timings)`), so the runner and the command line use
either one the same way; normalisation, background vote and output units are the engine's.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from conventions.tasks import TaskSpec
from infer.engine.geometry import signal_box
from infer.engine.intensity import background_vote
from infer.engine.slices import EngineSettings, check_task, input_foregrounds, normalize_inputs, to_output

WINDOW_KEY = "sliding_window"
"""Key of a checkpoint's `provenance` holding its `WindowSettings` (written by training)."""

BLEND_MODES: tuple[str, ...] = ("gaussian", "constant")


@dataclass(frozen=True)
class WindowSettings:
    """roi_size: window side per axis (X, Y, Z), in voxels. overlap: fraction of a window shared with the next
    one along each axis. mode: blending weight of overlapping windows. sigma_scale: the Gaussian's sigma as a
    fraction of the window side. batch_size: windows per forward pass."""

    roi_size: tuple[int, int, int] = (64, 64, 64)
    overlap: float = 0.25
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    batch_size: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "roi_size", tuple(int(n) for n in self.roi_size))
        if len(self.roi_size) != 3 or min(self.roi_size) < 1:
            raise ValueError(f"roi_size must be three positive sides, got {list(self.roi_size)}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.mode not in BLEND_MODES:
            raise ValueError(f"blending mode must be one of {', '.join(BLEND_MODES)}, got {self.mode!r}")
        if self.batch_size < 1:
            raise ValueError(f"windows per pass must be at least 1, got {self.batch_size}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "roi_size": list(self.roi_size)}

    @classmethod
    def from_provenance(cls, provenance: Mapping[str, Any]) -> WindowSettings:
        """The settings a checkpoint recorded (the defaults for keys it lacks)."""
        return cls(**provenance.get(WINDOW_KEY, {}))


def blended_pass(volume: torch.Tensor, network: Callable[[torch.Tensor], torch.Tensor], window: WindowSettings,
                 fill: float) -> torch.Tensor:
    """`network` over (1, C, X, Y, Z) in overlapping windows, the outputs blended: (1, C', X, Y, Z)."""
    return sliding_window_inference(volume, list(window.roi_size), window.batch_size, network,
                                    overlap=window.overlap, mode=window.mode, sigma_scale=window.sigma_scale,
                                    padding_mode="constant", cval=fill)


def patch_settings(task: TaskSpec, model: nn.Module) -> EngineSettings:
    """Engine settings of a full-3D generator (with `.config` and `.meta`) on `task`; a 3D model has no slices,
    so `views` and `image_size` are unused."""
    check_task(task, model)
    meta = model.meta
    return EngineSettings(modalities=tuple(meta.modalities), normalization={**task.normalization, **meta.normalization},
                          views=("axial",), image_size=0, output_offset=task.output_offset,
                          output_background=task.output_background, output_floor=task.output_floor)


class PatchVolumePredictor:
    """Synthesises a missing volume with a full-3D patch generator in one sliding-window pass.

    model(x, available, target) -> (B, 1, D, H, W) as in `models.generator3d.Generator3D`, run in eval() under
    torch.inference_mode. window: see `WindowSettings` (by default, what the checkpoint recorded); batch_size,
    when given, replaces its windows per forward pass.
    """

    precision = "fp32"
    """Full-3D generators run in float32 (`--precision` applies to slice generators)."""

    def __init__(self, model: nn.Module, settings: EngineSettings, window: WindowSettings | None = None,
                 batch_size: int | None = None, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.settings = settings
        window = window or WindowSettings.from_provenance(model.meta.provenance)
        self.window = window if batch_size is None else replace(window, batch_size=batch_size)

    @torch.inference_mode()
    def predict(self, volumes: Mapping[str, np.ndarray], target: str,
                timings: dict[str, float] | None = None) -> np.ndarray:
        """The `target` volume in output units (float32), from raw input `volumes` keyed by modality.

        timings: when given, the seconds of "preprocess", "forward" and "postprocess" are added to it.
        """
        settings, device = self.settings, self.device
        if target not in settings.modalities or target in volumes:
            raise ValueError(f"cannot synthesise {target!r} from {', '.join(volumes)}")
        clock = _StageClock(timings)
        foregrounds = input_foregrounds(volumes, settings)
        inputs, available = normalize_inputs(volumes, settings, foregrounds)
        background = background_vote(list(foregrounds.values()))
        box = signal_box(inputs, settings.fill)
        x = torch.from_numpy(np.ascontiguousarray(inputs[(slice(None), *box)]))[None].to(device)
        available_t = torch.from_numpy(available)[None].to(device)
        target_t = torch.tensor([settings.modalities.index(target)], device=device)
        clock.lap("preprocess")

        def network(patch: torch.Tensor) -> torch.Tensor:
            n = len(patch)
            return self.model(patch, available_t.expand(n, -1), target_t.expand(n))

        generated = blended_pass(x, network, self.window, settings.fill)
        clock.lap("forward")
        synthesis = np.full(inputs.shape[1:], settings.fill, dtype=np.float32)
        synthesis[box] = generated[0, 0].float().cpu().numpy()
        out = to_output(synthesis, background, settings.normalization[target], settings)
        clock.lap("postprocess")
        return out


class _StageClock:
    """Adds the wall seconds since the previous lap to `timings[stage]` (nothing when `timings` is None)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings, self.last = timings, time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
        self.last = now
