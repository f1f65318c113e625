"""The 3D refiner as the engine's `refine` hook, and which refiner a run uses.

`SlidingWindowRefiner` runs a `models.refiner.Refiner3D` once over the stacked (and view-averaged) slice
synthesis in overlapping, Gaussian-blended windows (`infer.engine.patches`), in normalised space, before background
and denormalisation. It blends the corrections (refined minus synthesis), not the refined windows, so a refiner
whose correction is zero (an untrained one) returns the synthesis exactly.

Selection (`refiner_path`): `--refine CKPT` names a refiner checkpoint folder and `--refine none` turns
refinement off; without the option, a generator checkpoint folder holding a `refiner/` sub-folder (a refiner
checkpoint trained on that generator's volumes, `python -m train refiner`) is refined with it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from infer.engine.geometry import signal_box
from infer.engine.patches import WindowSettings, blended_pass
from infer.engine.slices import EngineSettings
from models.checkpoint import CONFIG_FILE, load_model

REFINER_FOLDER = "refiner"
"""Sub-folder of a generator checkpoint that holds the refiner inference uses by default."""

NO_REFINER = "none"
"""`--refine` value that turns refinement off."""


def refiner_path(option: str | None, generator: Path) -> Path | None:
    """The refiner checkpoint of a run: `option` (a folder, or `NO_REFINER`) when given, else the generator
    checkpoint's `REFINER_FOLDER` when it holds one, else None."""
    if option is not None:
        return None if option == NO_REFINER else Path(option)
    bundled = Path(generator) / REFINER_FOLDER
    return bundled if (bundled / CONFIG_FILE).is_file() else None


class SlidingWindowRefiner:
    """refine(synthesis (X, Y, Z), inputs (M, X, Y, Z), target index) -> refined synthesis, all normalised.

    model(synthesis, inputs, target) -> refined, as `models.refiner.Refiner3D`; run in eval() under
    torch.inference_mode over the `signal_box` of the inputs (voxels outside it are left as they are).
    """

    def __init__(self, model: nn.Module, window: WindowSettings, fill: float,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.window, self.fill = window, fill

    @torch.inference_mode()
    def __call__(self, synthesis: np.ndarray, inputs: np.ndarray, target: int) -> np.ndarray:
        box = signal_box(inputs, self.fill)
        stacked = np.concatenate((synthesis[None], inputs))[(slice(None), *box)]
        volume = torch.from_numpy(np.ascontiguousarray(stacked, dtype=np.float32))[None].to(self.device)
        target_t = torch.tensor([target], device=self.device)

        def correction(patch: torch.Tensor) -> torch.Tensor:
            current = patch[:, :1]
            return self.model(current, patch[:, 1:], target_t.expand(len(patch))) - current

        delta = blended_pass(volume, correction, self.window, self.fill)
        refined = np.array(synthesis, dtype=np.float32)
        refined[box] += delta[0, 0].float().cpu().numpy()
        return refined


def load_refiner(path: str | Path, settings: EngineSettings,
                 device: str | torch.device = "cpu") -> SlidingWindowRefiner:
    """The refiner checkpoint at `path` as a refine hook for a generator run with `settings`; ValueError when
    it was trained for other modalities or other intensity statistics."""
    model = load_model(path, device=device, kind="refiner")
    meta = model.meta
    if tuple(meta.modalities) != settings.modalities:
        raise ValueError(f"{path}: the refiner's modalities {list(meta.modalities)} differ from the generator's "
                         f"{list(settings.modalities)}")
    differing = [m for m in settings.modalities if meta.normalization.get(m) != settings.normalization[m]]
    if differing:
        raise ValueError(f"{path}: the refiner was trained with other intensity statistics for "
                         f"{', '.join(differing)} than the generator uses")
    return SlidingWindowRefiner(model, WindowSettings.from_provenance(meta.provenance), settings.fill, device)
