"""Task specifications: everything task-specific is data here, the engine has no task code paths.

This module is the one place that names the BraTS modalities and holds the BraSyn normalisation statistics.
"""
from __future__ import annotations

from dataclasses import dataclass, field

BRATS_MODALITIES: tuple[str, ...] = ("t1c", "t1n", "t2f", "t2w")
"""BraTS MRI modalities in the order the published BraSyn generator uses (channel index = position)."""


@dataclass(frozen=True)
class ZScoreNorm:
    """Dataset-level intensity normalisation of one modality.

    Forward: negatives -> 0, clip at `clip_max`, z-score with `mean`/`std`, voxels that were 0 -> `background`.
    Inverse: x * std + mean, negatives -> 0.
    """

    clip_max: float
    mean: float
    std: float
    background: float = -1.0


BRASYN_NORMALIZATION: dict[str, ZScoreNorm] = {
    # 99.5th percentile of non-zero voxels; mean/std after clipping (BraTS 2025 GLI+MET training set).
    "t1c": ZScoreNorm(clip_max=8664.0, mean=1066.3375, std=1301.7006),
    "t1n": ZScoreNorm(clip_max=7315.0, mean=781.2247, std=944.3418),
    "t2f": ZScoreNorm(clip_max=8842.0, mean=510.9852, std=769.4159),
    "t2w": ZScoreNorm(clip_max=8233.0, mean=673.4393, std=804.3864),
}


@dataclass(frozen=True)
class TaskSpec:
    """What a synthesis task is, as data.

    modalities: every channel the model knows, in model order.
    min_inputs / max_inputs: how many of them a case must provide.
    normalization: default per-modality statistics (a checkpoint's own statistics take precedence).
    default_views: slicing views used when neither the user nor the checkpoint says otherwise.
    targets: the modalities that may be synthesised (empty = any of `modalities`); every target a case lacks
        is synthesised, so a case must lack at least one.
    file_name: how an input file and an output file are named, as a format string of `case` and `modality`.
    ignored: names in the `modality` position of files that belong to a case but are not inputs (skipped).
    output_offset: added after denormalising (output units = denormalised value + offset).
    output_background: value of the output where the inputs' majority vote says background.
    output_dtype: numpy dtype name of the written output.

    The output header is the one of the first available input in `modalities` order, with `output_dtype`.
    An MR -> CT task with CT normalised as HU + 1000 would read: modalities ("t1", "ct"), min_inputs =
    max_inputs = 1, targets ("ct",), output_offset -1000, output_background -1000.
    """

    name: str
    modalities: tuple[str, ...]
    min_inputs: int
    max_inputs: int
    normalization: dict[str, ZScoreNorm] = field(default_factory=dict)
    default_views: tuple[str, ...] = ("axial",)
    targets: tuple[str, ...] = ()
    file_name: str = "{case}-{modality}.nii.gz"
    ignored: tuple[str, ...] = ()
    output_offset: float = 0.0
    output_background: float = 0.0
    output_dtype: str = "float32"

    @property
    def target_modalities(self) -> tuple[str, ...]:
        """The modalities that may be synthesised."""
        return self.targets or self.modalities


BRASYN = TaskSpec(
    name="brasyn",
    modalities=BRATS_MODALITIES,
    min_inputs=3,
    max_inputs=3,
    normalization=BRASYN_NORMALIZATION,
    default_views=("axial",),
    file_name="{case}-{modality}.nii.gz",  # inputs and the output alike: no copies of inputs, no suffix
    ignored=("seg",),  # BraTS training folders carry the tumour labels beside the images
    output_background=0.0,
    output_dtype="float32",
)

TASKS: dict[str, TaskSpec] = {BRASYN.name: BRASYN}

VIEWS: tuple[str, ...] = ("axial", "sagittal", "coronal")
"""Slicing views; the position is the view index the generator's view embedding receives.

For a volume array indexed [i, j, k] (nibabel order): axial slices are [:, :, k] (H=i, W=j), sagittal slices
are [i, :, :] (H=j, W=k) and coronal slices are [:, j, :] (H=i, W=k), as in the published BraSyn pipeline.
"""

VIEW_AXES: dict[str, int] = {"axial": 2, "sagittal": 0, "coronal": 1}
"""The array axis each view slices along (the convention above); the two other axes keep their order as H, W."""
