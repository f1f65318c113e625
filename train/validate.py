"""Validation on held-out cases through the real inference engine and the project's image metrics.

Each held-out case is synthesised volume by volume with `infer.engine.slices.VolumePredictor` (exactly what inference
does) and scored with `infer.evaluate.metrics.image_metrics` (brain-only SSIM of healthy tissue and tumour, challenge
SSIM, PSNR); the results are averaged over the cases, ignoring metrics a case cannot have (no segmentation).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from infer.engine.slices import EngineSettings, VolumePredictor
from infer.evaluate.metrics import image_metrics, percentile_normalize
from conventions.normalization import Normalization
from conventions.tasks import TaskSpec
from train.data.cases import TrainCase, load_case
from train.curves import plt

REPORTED = ("ssim_brain_healthy", "ssim_brain_tumour", "ssim_brain", "ssim_healthy", "ssim_tumour", "psnr")
"""The `image_metrics` keys a validation reports (means over the validated volumes)."""


@dataclass(frozen=True)
class Sample:
    """One validated volume, kept as a picture: the axial slice with the most tumour (else the most brain)."""

    case: str
    target: str
    inputs: dict[str, np.ndarray]
    reference: np.ndarray
    prediction: np.ndarray


def validation_plan(cases: Sequence[TrainCase], modalities: Sequence[str], limit: int, all_targets: bool,
                    seed: int) -> list[tuple[TrainCase, str]]:
    """(case, target modality) pairs: the first `limit` cases, every modality or one seeded choice each."""
    rng = np.random.default_rng(seed)
    plan = []
    for case in cases[:limit]:
        targets = modalities if all_targets else [modalities[int(rng.integers(len(modalities)))]]
        plan += [(case, t) for t in targets]
    return plan


def engine_settings(generator: nn.Module, task: TaskSpec, norms: Mapping[str, Normalization],
                    views: Sequence[str]) -> EngineSettings:
    """Inference settings of a generator being trained on `task` (what its checkpoint will say)."""
    config = generator.config
    return EngineSettings(modalities=task.modalities, normalization=dict(norms), views=tuple(views),
                          image_size=config.image_size, context_slices=config.context_slices,
                          view_embedding=config.num_views > 0, output_offset=task.output_offset,
                          output_background=task.output_background, output_floor=task.output_floor,
                          window_overlap=task.window_overlap,
                          crop_to=task.crop_to)


def _picture_slice(reference: np.ndarray, seg: np.ndarray | None) -> int:
    score = (seg > 0) if seg is not None and (seg > 0).any() else (reference > 0)
    return int(score.sum(axis=(0, 1)).argmax())


def validate(generator: nn.Module, task: TaskSpec, settings: EngineSettings, plan: Sequence[tuple[TrainCase, str]],
             device: str, batch_size: int, progress: bool = True) -> tuple[dict[str, float], list[Sample]]:
    """Mean `REPORTED` metrics over `plan` and one picture per volume; the generator is left in train().
    Each target is synthesised from the inputs `task` gives it, in float32 (figures independent of the machine's
    bf16 support)."""
    predictor = VolumePredictor(generator, settings, batch_size=batch_size, device=device, precision="fp32")
    scores: dict[str, list[float]] = {k: [] for k in REPORTED}
    samples = []
    try:
        for case, target in tqdm(plan, desc="validation", unit="volume", leave=False, disable=not progress):
            volumes, seg = load_case(case, settings.modalities)
            inputs = {m: volumes[m] for m in task.inputs_for(target)}
            prediction = predictor.predict(inputs, target)
            metrics = image_metrics(prediction, volumes[target], seg)
            for k in REPORTED:
                scores[k].append(metrics[k])
            z = _picture_slice(volumes[target], seg)
            samples.append(Sample(case.name, target, {m: v[:, :, z] for m, v in inputs.items()},
                                  volumes[target][:, :, z], prediction[:, :, z]))
    finally:
        generator.train()
    means = {k: float(np.nanmean(v)) if any(not math.isnan(x) for x in v) else math.nan for k, v in scores.items()}
    return means, samples


def plot_samples(samples: Sequence[Sample], png_path: str | Path) -> Path:
    """A row per volume: the inputs, the reference and the synthesis (each scaled by its own percentiles)."""
    cols = max(len(s.inputs) for s in samples) + 2
    fig, axes = plt.subplots(len(samples), cols, figsize=(2.2 * cols, 2.2 * len(samples)), squeeze=False)
    for row, s in zip(axes, samples):
        panels = [*s.inputs.items(), (f"{s.target} reference", s.reference), (f"{s.target} synthesis", s.prediction)]
        for ax, (title, image) in zip(row, panels):
            ax.imshow(np.rot90(percentile_normalize(image)), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{s.case[-9:]} {title}" if ax is row[0] else title, fontsize=7)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
    return Path(png_path)
