"""TISS-Net inference (`models.tissnet`): the missing target modality and the fine whole-tumour mask of a case in
one sliding-window pass, arrays in and out (no file I/O).

The inputs are normalised with the checkpoint's statistics (the engine's `normalize_inputs`), cropped to the
bounding box of their signal and run through G and S in overlapping 2.5D windows (`infer.engine.patches`,
the window the checkpoint recorded); each window gives the synthesis and the fine mask's probability, blended
by the window weights. The synthesis goes to output units as every generator's does (`to_output`: the inputs'
background vote, the task's floor); the mask is the blended probability above 0.5, background outside the
brain. A checkpoint synthesises the targets its provenance lists under `TARGETS_KEY` (one: the paper trains one
network per missing modality).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from conventions.tasks import TaskSpec
from infer.engine.geometry import signal_box
from infer.engine.intensity import background_vote
from infer.engine.patches import WindowSettings, blended_pass
from infer.engine.slices import EngineSettings, Timings, input_foregrounds, normalize_inputs, timed, to_output

TARGETS_KEY = "targets"
"""Key of a TISS-Net checkpoint's `provenance` listing the modalities it synthesises."""


def checkpoint_target(model: nn.Module, task: TaskSpec) -> str:
    """The one target a TISS-Net checkpoint (with `.config` and `.meta`) synthesises for `task`; ValueError
    when it does not fit the task."""
    meta = model.meta
    if meta.task != task.name:
        raise ValueError(f"the checkpoint is for task {meta.task!r}, not {task.name!r}")
    if sorted(meta.modalities) != sorted(task.modalities):
        raise ValueError(f"the checkpoint's modalities {list(meta.modalities)} do not match task {task.name!r} "
                         f"({list(task.modalities)})")
    targets = meta.provenance.get(TARGETS_KEY)
    if not isinstance(targets, list) or len(targets) != 1 or targets[0] not in task.target_modalities:
        raise ValueError(f"the checkpoint must declare one target of task {task.name} in provenance.{TARGETS_KEY}, "
                         f"got {targets!r}")
    if model.config.num_inputs != len(task.inputs_for(targets[0])):
        raise ValueError(f"the checkpoint takes {model.config.num_inputs} inputs; {targets[0]} of task {task.name} "
                         f"has {len(task.inputs_for(targets[0]))}")
    return targets[0]


def tissnet_settings(task: TaskSpec, model: nn.Module) -> EngineSettings:
    """Engine settings (normalisation, output units) of a TISS-Net checkpoint on `task`; a 3D model has no
    slices, so `views` and `image_size` are unused."""
    meta = model.meta
    return EngineSettings(modalities=tuple(meta.modalities), normalization={**task.normalization, **meta.normalization},
                          views=("axial",), image_size=0, output_offset=task.output_offset,
                          output_background=task.output_background, output_floor=task.output_floor)


class TissNetPredictor:
    """The target modality (`predict`, as the engine's `VolumePredictor`) and, with it, the fine whole-tumour
    mask (`predict_with_segmentation`) of a case, from a "tissnet" checkpoint run in eval() in float32.

    window: the sliding window (by default, what the checkpoint recorded); batch_size, when given, replaces its
    windows per forward pass.
    """

    precision = "fp32"
    """TISS-Net runs in float32 (`--precision` applies to slice generators)."""

    def __init__(self, model: nn.Module, settings: EngineSettings, target: str, window: WindowSettings | None = None,
                 batch_size: int | None = None, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.settings, self.target = settings, target
        self.sources = [settings.modalities.index(m) for m in settings.modalities if m != target]
        window = window or WindowSettings.from_provenance(model.meta.provenance)
        self.window = window if batch_size is None else replace(window, batch_size=batch_size)
        multiple = model.size_multiple
        if any(side % m for side, m in zip(self.window.roi_size, multiple)):
            raise ValueError(f"window {list(self.window.roi_size)} must be a multiple of {list(multiple)} per side")

    def predict(self, volumes: Mapping[str, np.ndarray], target: str, timings: Timings | None = None) -> np.ndarray:
        """The `target` volume in output units (float32)."""
        return self.predict_with_segmentation(volumes, target, timings)[0]

    @torch.inference_mode()
    def predict_with_segmentation(self, volumes: Mapping[str, np.ndarray], target: str,
                                  timings: Timings | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(the `target` volume in output units (float32), the fine whole-tumour mask (uint8 0/1)) from raw
        input `volumes` keyed by modality; timings: see `VolumePredictor.predict`."""
        settings, device = self.settings, self.device
        if target != self.target:
            raise ValueError(f"this TISS-Net checkpoint synthesises {self.target} only, not {target}")
        missing = [settings.modalities[i] for i in self.sources if settings.modalities[i] not in volumes]
        if missing:
            raise ValueError(f"TISS-Net needs {', '.join(settings.modalities[i] for i in self.sources)} to "
                             f"synthesise {target}; missing {', '.join(missing)}")
        with timed(timings, "preprocess"):
            foregrounds = input_foregrounds(volumes, settings)
            inputs, _ = normalize_inputs(volumes, settings, foregrounds)
            background = background_vote(list(foregrounds.values()))
            box = signal_box(inputs, settings.fill)
            x = torch.from_numpy(np.ascontiguousarray(inputs[(self.sources, *box)]))[None].to(device)
        with timed(timings, "forward", device):
            blended = blended_pass(x, self._network, self.window, settings.fill)[0].float().cpu().numpy()
        with timed(timings, "postprocess"):
            synthesis = np.full(inputs.shape[1:], settings.fill, dtype=np.float32)
            synthesis[box] = blended[0]
            mask = np.zeros(inputs.shape[1:], dtype=np.uint8)
            mask[box] = blended[1] > 0.5
            mask[background] = 0
            out = to_output(synthesis, background, settings.normalization[target], settings)
        return out, mask

    def _network(self, patch: torch.Tensor) -> torch.Tensor:
        """(B, 2, X, Y, Z): the synthesis and the fine mask's probability of a batch of windows."""
        out = self.model(patch)
        return torch.cat([out.synthesis, torch.sigmoid(out.fine)], dim=1)
