"""Training configuration as data: nested dataclasses loaded from YAML, with dotted command-line overrides.

A YAML file may name a `base` file (relative to itself) whose values it overrides. Every key is checked:
an unknown or mistyped key is a `ConfigError` naming it. `Config.to_dict()` is what checkpoints record.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """An invalid configuration file, key or value (one line)."""


@dataclass
class DataConfig:
    """Where the cases are and how they become slices.

    roots: BraTS-layout folders (one sub-folder per case, either naming convention). task: name in
    `conventions.tasks.TASKS` (modalities, file names, fallback statistics). normalization: "dataset" (z-score with
    `stats`, a JSON from `python -m train stats`, or the task's published statistics when None) or "case" (the
    task's per-case normalisation, `TaskSpec.case_normalization`).
    views: slicing views to train on. slice_size: square side slices are padded to (the inference rule).
    crop: train on random crops of this side instead (None = whole slices); it sets the networks' input size,
    and a generator trained on crops cannot run through the inference engine. min_brain_pixels: a slice is kept when
    every modality has at least this many foreground pixels. min_tumour_fraction: keep only slices whose
    tumour covers at least this fraction of the square slice (segmenter training; 0 = no filter).
    split: a split file (JSON with "train" and "validation" case lists, e.g. `train/splits/brats18.json`) whose
    validation cases are held out (overrides val_cases and val_fraction).
    val_cases: case names held out (overrides val_fraction); split_seed: seed of the case-level split.
    require_seg: drop training cases without a segmentation. cache_dir: prepared-slice cache (None = in memory).
    """

    roots: list[str] = field(default_factory=list)
    task: str = "brasyn"
    normalization: str = "dataset"
    stats: str | None = None
    views: list[str] = field(default_factory=lambda: ["axial"])
    slice_size: int = 240
    crop: int | None = None
    min_brain_pixels: int = 2000
    min_tumour_fraction: float = 0.0
    val_fraction: float = 0.1
    split: str | None = None
    val_cases: list[str] = field(default_factory=list)
    split_seed: int = 0
    require_seg: bool = True
    cache_dir: str | None = None


@dataclass
class ModelConfig:
    """The network family and the architecture keyword arguments of its `models.*Config` classes.

    family: the model family trained (`models.families`): "hfgan" (HF-GAN generator + PatchGAN with modality
    head, `train.families.hfgan`), "pix2pix" (U-Net + multi-scale PatchGAN on (inputs, output) pairs,
    `train.families.pix2pix`; the task must have exactly one target), both by the GAN loop `train.loop`, or
    "segmenter" (the slice segmenter of the Tversky loss, `train.families.segmenter`).
    init: a generator checkpoint folder whose weights start the run (fine-tuning; same architecture), or None.
    """

    family: str = "hfgan"
    init: str | None = None
    generator: dict[str, Any] = field(default_factory=dict)
    discriminator: dict[str, Any] = field(default_factory=dict)
    segmenter: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """Weights of the generator loss terms (0 = term off) and their settings. Each model family uses its own
    terms (`train.families.hfgan.GENERATOR_TERMS`, `train.families.pix2pix.PIX2PIX_TERMS`); the other family's
    weights are unused.

    ssim_regions: SSIM loss regions averaged with equal weight: ["brain"] (whole) or ["healthy", "tumour"].
    segmenter: checkpoint folder of the frozen segmenter (needed when tversky > 0).
    ngf / ngf_alpha: normalised-gradient-field term between the output and the first input (Pix2Pix).
    background / background_margin: L1 towards the background value outside the inputs' foreground dilated by
    this many pixels (Pix2Pix).
    tversky_alpha / tversky_beta: weights of false positives / false negatives; tversky_gamma: focal exponent.
    segmenter_cross_entropy: weight of pixel-wise cross-entropy added to the focal Tversky loss when the slice
    segmenter trains (`train.families.segmenter`): a class absent from a batch gives the Tversky term no
    gradient against false positives once any exist, cross-entropy does.
    """

    l1: float = 10.0
    adversarial: float = 0.25
    classification: float = 0.25
    feature: float = 1.0
    cycle: float = 1.0
    ssim: float = 5.0
    tversky: float = 0.0
    ssim_regions: list[str] = field(default_factory=lambda: ["healthy", "tumour"])
    segmenter: str | None = None
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    tversky_gamma: float = 0.75
    segmenter_cross_entropy: float = 0.0
    ngf: float = 0.0
    ngf_alpha: float = 0.08
    background: float = 0.0
    background_margin: int = 2


@dataclass
class OptimConfig:
    """Adam, learning rate `lr` at global batch `reference_batch` (scaled linearly), warm-up + one cosine cycle
    over every optimizer step; the discriminator runs at `d_lr_factor` times the generator's rate."""

    lr: float = 5e-4
    reference_batch: int = 64
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 0.1
    d_lr_factor: float = 0.1
    warmup_fraction: float = 0.02
    min_lr_fraction: float = 0.0


@dataclass
class TrainConfig:
    """Run length and numerics. max_steps (batches) overrides epochs when set. random_subsets: each sample
    gets a random non-empty subset of the other modalities instead of all three. targets: the modalities each
    batch trains as the target, one optimizer step each; a name given twice gets two steps per batch, which
    weights that target (None = every target modality of the task once)."""

    batch_size: int = 16
    epochs: int = 10
    max_steps: int | None = None
    seed: int = 0
    random_subsets: bool = False
    targets: list[str] | None = None
    amp: bool = True
    compile: bool = False
    channels_last: bool = False


@dataclass
class RunConfig:
    """Where and how a run reports; none of this changes the trained weights.

    device: "auto" (CUDA when present), "cpu" or "cuda". checkpoint_every / validate_every: in steps (batches;
    0 = only at the end / never). validation_cases: at most this many held-out cases; validation_all_targets:
    every modality of each case instead of one seeded choice per case.
    """

    output: str = "runs/train"
    device: str = "auto"
    num_workers: int = 2
    checkpoint_every: int = 1000
    validate_every: int = 0
    validation_cases: int = 4
    validation_all_targets: bool = False
    validation_batch_size: int = 16
    progress: bool = True


@dataclass
class Config:
    """A whole training configuration (one section per dataclass above)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/weights-only-safe), as runs and checkpoints record it."""
        return dataclasses.asdict(self)


@dataclass
class VolumeDataConfig:
    """Cases of the volumetric models (3D refiner, full-3D generator).

    roots, task, normalization, val_fraction, split, val_cases, split_seed, require_seg: as in `DataConfig`. stats: statistics of a
    full-3D generator (a refiner uses its generator's). cache_dir: where each training case is kept normalised
    and cropped to its brain, with the frozen generator's volumes for a refiner (`python -m train cache-volumes`).
    inputs: the modalities a 3D segmenter reads (empty = every modality of the task), e.g. without FLAIR.
    """

    roots: list[str] = field(default_factory=list)
    task: str = "brasyn"
    normalization: str = "dataset"
    stats: str | None = None
    val_fraction: float = 0.0
    split: str | None = None
    val_cases: list[str] = field(default_factory=list)
    split_seed: int = 0
    require_seg: bool = False
    cache_dir: str = "runs/volumes"
    inputs: list[str] = field(default_factory=list)


@dataclass
class VolumeModelConfig:
    """family: the model family trained (`models.families`: refiner, full3d or segmenter3d), named by the config
    file or by the command (`python -m train refiner` etc.). generator: the frozen 2D generator checkpoint whose
    volumes a refiner corrects. refiner / generator3d / segmenter3d: keyword arguments of
    `models.refiner.RefinerConfig` / `models.generator3d.Generator3DConfig` / `models.segmenter3d.Segmenter3DConfig`."""

    family: str = ""
    generator: str | None = None
    refiner: dict[str, Any] = field(default_factory=dict)
    generator3d: dict[str, Any] = field(default_factory=dict)
    segmenter3d: dict[str, Any] = field(default_factory=dict)


@dataclass
class PatchConfig:
    """Training patches and the sliding window of inference (the checkpoint records the window).

    size: patch and window side per axis (X, Y, Z). overlap, blend, sigma_scale, window_batch: `overlap`,
    `mode`, `sigma_scale` and `batch_size` of `infer.engine.patches.WindowSettings`. tumour_fraction: share of the
    patches centred on a tumour voxel (the 3D segmenter; the others are uniform).
    """

    size: list[int] = field(default_factory=lambda: [64, 64, 64])
    tumour_fraction: float = 0.0
    overlap: float = 0.25
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    window_batch: int = 1


@dataclass
class VolumeLossConfig:
    """Weights of L1 and of 1 - 3D SSIM, both over the reference's brain voxels of a patch."""

    l1: float = 1.0
    ssim: float = 1.0


@dataclass
class VolumeOptimConfig:
    """Adam at `lr` with a linear warm-up over `warmup_fraction` of the steps, then one cosine cycle down to
    `min_lr_fraction` of it; gradients clipped at norm `grad_clip` (0 = off)."""

    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    warmup_fraction: float = 0.05
    min_lr_fraction: float = 0.0


@dataclass
class VolumeTrainConfig:
    """steps: optimizer steps, each on `batch_size` random patches; seed: weights and patch sampling."""

    batch_size: int = 2
    steps: int = 1000
    seed: int = 0


@dataclass
class VolumeRunConfig:
    """output: the run folder; device: "auto" (CUDA when present), "cpu" or "cuda". checkpoint_every: steps
    between resumable states (the 3D segmenter; 0 = only at the end)."""

    output: str = "runs/volumetric"
    device: str = "auto"
    progress: bool = True
    checkpoint_every: int = 0


@dataclass
class VolumeConfig:
    """A volumetric training configuration (`python -m train cache-volumes|refiner|full3d`)."""

    data: VolumeDataConfig = field(default_factory=VolumeDataConfig)
    model: VolumeModelConfig = field(default_factory=VolumeModelConfig)
    patch: PatchConfig = field(default_factory=PatchConfig)
    loss: VolumeLossConfig = field(default_factory=VolumeLossConfig)
    optim: VolumeOptimConfig = field(default_factory=VolumeOptimConfig)
    train: VolumeTrainConfig = field(default_factory=VolumeTrainConfig)
    run: VolumeRunConfig = field(default_factory=VolumeRunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_value(value: Any, hint: Any, key: str) -> Any:
    """`value` if it fits the type `hint` (ints are accepted for floats), else ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_value(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} is not a {hint}")
    if hint is Any:
        return value
    if hint is type(None):
        if value is None:
            return None
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(hint)
            return [_check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, hint):
        return value
    raise ConfigError(f"{key}: {value!r} is not a {getattr(hint, '__name__', hint)}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types are ConfigErrors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = from_dict(hint, value, f"{prefix}{name}.")
        else:
            values[name] = _check_value(value, hint, f"{prefix}{name}")
    return cls(**values)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `update` wins (mappings are merged, everything else replaced)."""
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config as a dict, with its `base` chain merged in."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping")
    base = data.pop("base", None)
    return merge(read_yaml(path.parent / base), data) if base else data


def parse_override(text: str) -> dict[str, Any]:
    """`a.b.c=value` -> {"a": {"b": {"c": value}}}, the value parsed as YAML (`0.001`, `[axial]`, `null`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not KEY=VALUE")
    value = yaml.safe_load(raw) if raw.strip() else None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def config_data(path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """YAML file (with its bases) <- `overrides` (KEY=VALUE strings, dotted keys), as a dict."""
    data = read_yaml(path) if path is not None else {}
    for text in overrides:
        data = merge(data, parse_override(text))
    return data


def config_family(data: dict[str, Any]) -> str:
    """The model family a config's dict names (`model.family`; "hfgan" when left out, as `ModelConfig`)."""
    model = data.get("model") or {}
    family = model.get("family", ModelConfig.family) if isinstance(model, dict) else None
    if not isinstance(family, str):
        raise ConfigError(f"model.family must be a family name, got {family!r}")
    return family


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), schema: type = Config) -> Any:
    """Defaults <- YAML file (with its bases) <- `overrides`, as a `schema` (`Config`, or `VolumeConfig` for the
    volumetric models)."""
    return from_dict(schema, config_data(path, overrides))
