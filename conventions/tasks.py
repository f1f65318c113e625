"""Task specifications: everything task-specific is data here, the engine has no task code paths.

This module is the one place that names the BraTS modalities and holds the BraSyn normalisation statistics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conventions.naming import BRATS_2023, NAMINGS, SEGMENTATION, Naming
from conventions.normalization import Normalization, PercentileNorm, ScaleNorm, WindowNorm, ZScoreNorm

BRATS_MODALITIES: tuple[str, ...] = ("t1c", "t1n", "t2f", "t2w")
"""BraTS MRI modalities in the order the published BraSyn generator uses (channel index = position)."""


BRASYN_NORMALIZATION: dict[str, ZScoreNorm] = {
    # 99.5th percentile of non-zero voxels; mean/std after clipping (BraTS 2025 GLI+MET training set).
    "t1c": ZScoreNorm(clip_max=8664.0, mean=1066.3375, std=1301.7006),
    "t1n": ZScoreNorm(clip_max=7315.0, mean=781.2247, std=944.3418),
    "t2f": ZScoreNorm(clip_max=8842.0, mean=510.9852, std=769.4159),
    "t2w": ZScoreNorm(clip_max=8233.0, mean=673.4393, std=804.3864),
}


BRASYN_CASE_NORMALIZATION: dict[str, ScaleNorm] = {
    # Per case: 0 -> -1, the scan's own 99.5th brain percentile -> 1 (raw units differ a hundredfold between
    # sites). A synthesis is written with its 99.5th percentile at the BraSyn training set's one (clip_max
    # above), i.e. on the intensity scale of the challenge's data.
    m: ScaleNorm(percentile=99.5, output_high=z.clip_max) for m, z in BRASYN_NORMALIZATION.items()
}


@dataclass(frozen=True)
class TaskSpec:
    """What a synthesis task is, as data.

    modalities: every channel the model knows, in model order.
    min_inputs / max_inputs: how many of them a case must provide.
    normalization: default per-modality statistics (a checkpoint's own statistics take precedence).
    case_normalization: a per-case normalisation of every modality that models trained here use
        (`data.normalization: case`), or empty when the task has none.
    default_views: slicing views used when neither the user nor the checkpoint says otherwise.
    targets: the modalities that may be synthesised (empty = any of `modalities`).
    default_targets: the targets a case lacking them gets unless the user names others (empty = all `targets`);
        a case must lack at least one of them.
    inputs: the modalities that may be given (empty = any of `modalities`).
    namings: the naming conventions (`conventions.naming`) a case's files may follow; a case's outputs are named in
        the convention of its inputs, or always in `output_naming` when set.
    product: a derived output every complete case gets (e.g. "seg", a tumour segmentation), instead of the
        modalities it lacks; None for synthesis tasks.
    ignored: names in the `modality` position of files that belong to a case but are not inputs (skipped).
    output_offset: added after denormalising (output units = denormalised value + offset).
    output_background: value of the output where the inputs' majority vote says background.
    output_floor: the least value the output takes where the vote says foreground (None: no floor). BraTS
        brains hold no voxel of 0, and readers take 0 for background, so a BraSyn output must not write 0
        inside the brain.
    output_dtype: numpy dtype name of the written output.
    window_overlap: slices larger than the model's input are covered by sliding windows of the input's size
        with this overlap and Gaussian blending (None: such slices are an error).
    crop_to: the input modality whose foreground bounding box the engine crops every volume to before
        synthesis (the rest of the output is background), or None.
    metrics: how `python -m infer.evaluate` scores a synthesis: "brats" (challenge and brain SSIM, PSNR, MAE,
        `infer.evaluate.metrics.image_metrics`) or "field" (inside the first input's foreground, `field_metrics`).

    The output header is the one of the first available input in `modalities` order, with `output_dtype`.
    An MR -> CT task with CT normalised as HU + 1000 would read: modalities ("t1", "ct"), min_inputs =
    max_inputs = 1, targets ("ct",), output_offset -1000, output_background -1000.
    """

    name: str
    modalities: tuple[str, ...]
    min_inputs: int
    max_inputs: int
    normalization: dict[str, Normalization] = field(default_factory=dict)
    case_normalization: dict[str, Normalization] = field(default_factory=dict)
    default_views: tuple[str, ...] = ("axial",)
    targets: tuple[str, ...] = ()
    default_targets: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    namings: tuple[Naming, ...] = (BRATS_2023,)
    output_naming: Naming | None = None
    product: str | None = None
    ignored: tuple[str, ...] = ()
    output_offset: float = 0.0
    output_background: float = 0.0
    output_floor: float | None = None
    output_dtype: str = "float32"
    window_overlap: float | None = None
    crop_to: str | None = None
    metrics: str = "brats"

    @property
    def target_modalities(self) -> tuple[str, ...]:
        """The modalities that may be synthesised."""
        return self.targets or self.modalities

    @property
    def requested_targets(self) -> tuple[str, ...]:
        """The modalities synthesised where a case lacks them."""
        return self.default_targets or self.target_modalities

    @property
    def input_modalities(self) -> tuple[str, ...]:
        """The modalities a case may provide."""
        return self.inputs or self.modalities

    def inputs_for(self, target: str) -> tuple[str, ...]:
        """The modalities a model synthesising `target` is given (when a case has them)."""
        return tuple(m for m in self.input_modalities if m != target)


BRASYN = TaskSpec(
    name="brasyn",
    modalities=BRATS_MODALITIES,
    min_inputs=3,
    max_inputs=3,
    normalization=BRASYN_NORMALIZATION,
    case_normalization=BRASYN_CASE_NORMALIZATION,
    default_views=("axial",),
    namings=NAMINGS,  # <case>-t2f.nii.gz or <case>_flair.nii.gz: the output named as the inputs are
    ignored=("seg",),  # BraTS training folders carry the tumour labels beside the images
    output_background=0.0,
    output_floor=1.0,  # one intensity unit: nothing inside the brain is written as background
    output_dtype="float32",
)

MR2CT = TaskSpec(
    name="mr2ct",
    modalities=("t1", "ct"),
    min_inputs=1,
    max_inputs=1,
    normalization={
        # MR: per-case 1st-99.9th percentile of the head to [-1, 1]; the head mask (voxels above 5% of the
        # maximum, enclosed holes such as the dark skull filled) decides the output's background.
        "t1": PercentileNorm(low=1.0, high=99.9, foreground_fraction=0.05, fill_holes=True),
        "ct": WindowNorm(low=-1000.0, high=3000.0),  # Hounsfield units; -1 = air
    },
    default_views=("axial",),
    targets=("ct",),
    # <case>-t1.nii.gz in, <case>-ct.nii.gz out on the MR grid
    output_background=-1000.0,  # air outside the head
    output_dtype="int16",
    window_overlap=0.75,  # native in-plane size: 256x256 windows, Gaussian blending
    metrics="field",  # inside the MR head mask, with HU error and edge agreement
)

US2MR = TaskSpec(
    name="us2mr",
    modalities=("us", "t2w", "t2f"),
    min_inputs=1,
    max_inputs=1,
    normalization={
        # Ultrasound: per-case 2nd-98th percentile of its foreground (> 1% of the maximum) to [-1, 1].
        "us": PercentileNorm(low=2.0, high=98.0, foreground_fraction=0.01),
        # MR: foreground z-score with dataset statistics (the BraTS ones until `train stats` gives others).
        "t2w": BRASYN_NORMALIZATION["t2w"],
        "t2f": BRASYN_NORMALIZATION["t2f"],
    },
    default_views=("axial",),
    targets=("t2w", "t2f"),
    default_targets=("t2w",),  # FLAIR when asked: --targets t2w t2f
    inputs=("us",),
    # <case>-us.nii.gz in, <case>-t2w.nii.gz out on the ultrasound grid
    ignored=("seg",),  # tumour labels next to the images
    output_background=0.0,
    output_dtype="float32",
    crop_to="us",  # synthesise the ultrasound's foreground box only, paste it back
    metrics="field",  # inside the ultrasound's field of view
)

SEGMENT = TaskSpec(
    name="segment",
    modalities=BRATS_MODALITIES,
    min_inputs=4,
    max_inputs=4,
    namings=NAMINGS,
    output_naming=BRATS_2023,  # <case>-seg.nii.gz with 2023 labels whatever the inputs' naming
    product=SEGMENTATION,
    ignored=(SEGMENTATION,),  # a case's own labels beside its images are not inputs
    output_background=0.0,
    output_dtype="uint8",
)

T1N2T2W = TaskSpec(
    name="t1n2t2w",
    modalities=("t1n", "t2w"),
    min_inputs=1,
    max_inputs=1,
    normalization={m: BRASYN_NORMALIZATION[m] for m in ("t1n", "t2w")},
    case_normalization={m: BRASYN_CASE_NORMALIZATION[m] for m in ("t1n", "t2w")},
    default_views=("axial",),
    targets=("t2w",),
    inputs=("t1n",),
    namings=NAMINGS,
    ignored=(SEGMENTATION, "t1c", "t2f"),  # complete BraTS folders: the other modalities are neither inputs nor targets
    output_background=0.0,
    output_floor=1.0,
    output_dtype="float32",
)
"""The real-brain stand-in of document 000's single-input, single-target problem (ultrasound -> T2w): native T1
-> T2w on BraTS cases (`python -m train.benchmark`)."""

TASKS: dict[str, TaskSpec] = {task.name: task for task in (BRASYN, MR2CT, US2MR)}
"""The synthesis tasks with a container each (`docker/<task>/`); segmentation is `python -m infer.segment`."""

ALL_TASKS: dict[str, TaskSpec] = {**TASKS, T1N2T2W.name: T1N2T2W}
"""Every task a model trains for (`python -m train`) and runs on (`python -m infer --task`): `TASKS` and the
benchmark's stand-in tasks."""

VIEWS: tuple[str, ...] = ("axial", "sagittal", "coronal")
"""Slicing views; the position is the view index the generator's view embedding receives.

For a volume array indexed [i, j, k] (nibabel order): axial slices are [:, :, k] (H=i, W=j), sagittal slices
are [i, :, :] (H=j, W=k) and coronal slices are [:, j, :] (H=i, W=k), as in the published BraSyn pipeline.
"""

VIEW_AXES: dict[str, int] = {"axial": 2, "sagittal": 0, "coronal": 1}
"""The array axis each view slices along (the convention above); the two other axes keep their order as H, W."""
