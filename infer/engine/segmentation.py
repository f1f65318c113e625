"""The 3D tumour segmentation predictor: a "segmenter3d" checkpoint behind the interface of the engine's
`VolumePredictor` (`predict(volumes, target, timings)`), so the runner and the command line use it the same way.

The pipeline (`coarse_inputs`, shared with training): the brain's bounding box (voxels where any input has
signal), down-sampled by area averaging from the BraTS 1 mm grid to the checkpoint's `spacing_mm`, each channel
z-scored over its non-zero voxels (MONAI `NormalizeIntensity`); MONAI `sliding_window_inference` with the
checkpoint's window; the region logits up-sampled trilinearly to the box, thresholded at probability 0.5, and
the nested ET / TC / WT regions turned into labels (`conventions.regions.labels_from_regions`).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.transforms import NormalizeIntensity
from torch import nn

from conventions.regions import labels_from_regions
from infer.engine.geometry import signal_box
from infer.engine.patches import WindowSettings
from infer.engine.slices import Timings, timed

INPUT_SPACING_MM = 1.0
"""The grid BraTS distributes every case on (1 mm isotropic): what `spacing_mm` is relative to."""


def coarse_shape(shape: Sequence[int], spacing_mm: float) -> tuple[int, ...]:
    """The sides of a volume of `shape` (1 mm voxels) on the `spacing_mm` grid."""
    factor = spacing_mm / INPUT_SPACING_MM
    return tuple(max(1, math.ceil(n / factor)) for n in shape)


def coarse_inputs(volumes: Mapping[str, np.ndarray], modalities: Sequence[str], spacing_mm: float
                  ) -> tuple[torch.Tensor, tuple[slice, slice, slice]]:
    """(len(modalities), x, y, z) float32 network input and the brain box of the full grid it covers."""
    raw = np.stack([np.asarray(volumes[m], dtype=np.float32) for m in modalities])
    box = signal_box(np.maximum(raw, 0.0), 0.0)
    x = torch.from_numpy(np.ascontiguousarray(np.maximum(raw[(slice(None), *box)], 0.0)))
    x = F.interpolate(x[None], size=coarse_shape(x.shape[1:], spacing_mm), mode="area")[0]
    return NormalizeIntensity(nonzero=True, channel_wise=True)(x).as_tensor(), box


def coarse_regions(regions: np.ndarray, box: tuple[slice, slice, slice], spacing_mm: float) -> torch.Tensor:
    """(R, x, y, z) float32 {0, 1} region targets on the coarse grid of `coarse_inputs` (majority of each
    coarse voxel)."""
    r = torch.from_numpy(np.ascontiguousarray(regions[(slice(None), *box)], dtype=np.float32))
    return (F.interpolate(r[None], size=coarse_shape(r.shape[1:], spacing_mm), mode="area")[0] >= 0.5).float()


class SegmentationPredictor:
    """Tumour labels of a case from a "segmenter3d" checkpoint; `predict(volumes, target, timings)` as the
    engine's `VolumePredictor`, so the runner and the command line use it the same way."""

    precision = "fp32"
    """The segmenter runs in float32 (`--precision` applies to slice generators)."""

    def __init__(self, model: nn.Module, window: WindowSettings | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.modalities = tuple(model.meta.modalities)
        self.window = window or WindowSettings.from_provenance(model.meta.provenance)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(R, x, y, z) region logits of a (M, x, y, z) coarse input, by overlapping windows."""
        w = self.window
        return sliding_window_inference(x[None].to(self.device), w.roi_size, w.batch_size, self.model,
                                        overlap=w.overlap, mode=w.mode, sigma_scale=w.sigma_scale)[0].float()

    @torch.inference_mode()
    def predict(self, volumes: Mapping[str, np.ndarray], target: str, timings: Timings | None = None
                ) -> np.ndarray:
        """uint8 2023 labels on the inputs' grid (`target` is the task's product, "seg")."""
        missing = [m for m in self.modalities if m not in volumes]
        if missing:
            raise ValueError(f"the segmenter needs {', '.join(self.modalities)}; missing {', '.join(missing)}")
        with timed(timings, "preprocess"):
            x, box = coarse_inputs(volumes, self.modalities, self.model.config.spacing_mm)
        with timed(timings, "forward", self.device):
            logits = self.logits(x)
        with timed(timings, "postprocess"):
            size = tuple(s.stop - s.start for s in box)
            up = F.interpolate(logits[None].cpu(), size=size, mode="trilinear", align_corners=False)[0]
            labels = np.zeros(next(iter(volumes.values())).shape, dtype=np.uint8)
            labels[box] = labels_from_regions((up > 0).numpy())
            labels[~np.logical_or.reduce([np.asarray(volumes[m]) > 0 for m in self.modalities])] = 0
        return labels
