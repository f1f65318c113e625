"""Checkpoint format: a folder with `model.safetensors` (weights) and `config.json` (everything else).

config.json holds the network kind and its architecture sizes, the modality names in channel order, the
normalisation statistics, the task, the views the model was trained on and the training provenance, so a
model can be rebuilt and run without code changes. Loading never unpickles: safetensors and JSON only.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from conventions.normalization import Normalization, PercentileNorm, ScaleNorm, WindowNorm, ZScoreNorm, norm_from_json, norm_to_json
from models.families import FAMILIES, FAMILY_OF_KIND, NETWORKS, Family

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

CONFIG_KEYS: dict[str, type] = {"kind": str, "task": str, "arch": dict, "modalities": list, "views": list,
                                "normalization": dict, "provenance": dict, "family": str}
"""Top-level config.json entries and their JSON types; those after `modalities` may be left out, and `family`
(written since families were recorded; older checkpoints' family follows from their kind)."""

OPTIONAL_KEYS = ("views", "normalization", "provenance", "family")

JSON_TYPES = {str: "string", dict: "object", list: "array"}


class CheckpointError(ValueError):
    """A checkpoint folder is missing, incomplete or inconsistent."""


@dataclass
class CheckpointMeta:
    """Everything about a model except its weights and architecture sizes."""

    kind: str
    task: str
    modalities: tuple[str, ...]
    normalization: dict[str, Normalization] = field(default_factory=dict)
    views: tuple[str, ...] = ("axial",)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "task": self.task, "modalities": list(self.modalities),
                "normalization": {m: norm_to_json(n) for m, n in self.normalization.items()},
                "views": list(self.views), "provenance": self.provenance}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointMeta:
        return cls(kind=data["kind"], task=data["task"], modalities=tuple(data["modalities"]),
                   normalization={m: norm_from_json(n) for m, n in data.get("normalization", {}).items()},
                   views=tuple(data.get("views", ("axial",))), provenance=dict(data.get("provenance", {})))


def kind_of(model: nn.Module) -> str:
    for kind, (cls, _) in NETWORKS.items():
        if isinstance(model, cls):
            return kind
    raise CheckpointError(f"no checkpoint kind for {type(model).__name__}")


def _fits(value: Any, hint: Any) -> bool:
    """Whether JSON `value` can stand for a field of type `hint` (a finite number for a float, an array for a
    tuple)."""
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typing.get_origin(hint) is tuple:
        return isinstance(value, (list, tuple)) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    return isinstance(value, hint)


def check_fields(what: str, cls: type, values: dict[str, Any]) -> None:
    """CheckpointError unless each entry of `values` fits the type of the field of dataclass `cls` it names."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if not _fits(value, hints[name]):
            expected = hints[name].__name__ if isinstance(hints[name], type) else str(hints[name])
            raise CheckpointError(f"{what}: {name} must be {expected}, got {value!r}")


def _degenerate(norm: Normalization) -> str | None:
    """What makes `norm` map intensities to nothing usable (NaN or a constant), or None."""
    if isinstance(norm, ZScoreNorm) and norm.std <= 0:
        return f"std must be above 0, got {norm.std}"
    if isinstance(norm, (WindowNorm, PercentileNorm)) and not norm.low < norm.high:
        return f"low ({norm.low}) must be below high ({norm.high})"
    if isinstance(norm, ScaleNorm) and not (0 < norm.percentile <= 100 and norm.output_high > 0):
        return f"needs 0 < percentile <= 100 and output_high > 0, got {norm.percentile} and {norm.output_high}"
    return None


def check_normalization(modality: str, data: Any) -> None:
    """CheckpointError unless JSON `data` is a usable normalisation (finite statistics of the right types, a
    positive z-score std, a non-empty window or percentile range)."""
    what = f"normalization of {modality}"
    try:
        norm = norm_from_json(data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{what}: {' '.join(str(err).split())}") from None
    check_fields(what, type(norm), asdict(norm))
    problem = _degenerate(norm)
    if problem:
        raise CheckpointError(f"{what}: {problem}")


def check_config(config: dict[str, Any]) -> None:
    """CheckpointError naming the first entry of a parsed config.json that a model cannot be rebuilt from (the
    architecture itself is checked by `build_network`)."""
    for key, json_type in CONFIG_KEYS.items():
        if key not in config and key not in OPTIONAL_KEYS:
            raise CheckpointError(f"{key} is missing")
        if key in config and not isinstance(config[key], json_type):
            raise CheckpointError(f"{key} must be a JSON {JSON_TYPES[json_type]}, got {config[key]!r}")
    if config["kind"] not in NETWORKS:
        raise CheckpointError(f"unknown network kind {config['kind']!r}; known: {', '.join(NETWORKS)}")
    family = config.get("family", FAMILY_OF_KIND[config["kind"]])
    if family not in FAMILIES:
        raise CheckpointError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    if config["kind"] not in FAMILIES[family].networks:
        raise CheckpointError(f"family {family} has no network kind {config['kind']!r} "
                              f"(it has {', '.join(FAMILIES[family].networks)})")
    if not all(isinstance(name, str) for name in [*config["modalities"], *config.get("views", [])]):
        raise CheckpointError("modalities and views must be arrays of names")
    for modality, data in config.get("normalization", {}).items():
        check_normalization(modality, data)


def build_network(kind: str, arch: dict[str, Any]) -> nn.Module:
    """Instantiate a network of `kind` from its architecture dict (unknown keys, values of the wrong type and
    sizes the network rejects are a CheckpointError)."""
    if kind not in NETWORKS:
        raise CheckpointError(f"unknown network kind {kind!r}; known: {', '.join(NETWORKS)}")
    cls, config_cls = NETWORKS[kind]
    known = {f.name for f in fields(config_cls)}
    unknown = set(arch) - known
    if unknown:
        raise CheckpointError(f"unknown {kind} config keys: {', '.join(sorted(unknown))}")
    check_fields(f"{kind} config", config_cls, arch)
    try:
        return cls(config_cls(**arch))
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"invalid {kind} config: {' '.join(str(err).split())}") from None


def save_checkpoint(model: nn.Module, path: str | Path, meta: CheckpointMeta) -> Path:
    """Write `path/model.safetensors` and `path/config.json`; each file is replaced atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if meta.kind != kind_of(model):
        raise CheckpointError(f"meta says {meta.kind!r} but the model is a {kind_of(model)}")
    # clone: safetensors refuses tensors sharing memory (MONAI DynUNet registers its blocks twice)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    config = {"format_version": FORMAT_VERSION, "family": FAMILY_OF_KIND[meta.kind], "arch": asdict(model.config),
              **meta.to_json()}
    with tempfile.NamedTemporaryFile(dir=path, suffix=".tmp", delete=False) as tmp:
        tmp_weights = Path(tmp.name)
    save_file(state, str(tmp_weights), metadata={"format": "pt"})
    os.replace(tmp_weights, path / WEIGHTS_FILE)
    with tempfile.NamedTemporaryFile("w", dir=path, suffix=".tmp", delete=False) as tmp:
        json.dump(config, tmp, indent=1)
    os.replace(tmp.name, path / CONFIG_FILE)
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    """The parsed config.json of a checkpoint folder, checked by `check_config`."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint folder (no {CONFIG_FILE})")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path}: invalid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: not a JSON object")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{config_path}: unsupported format_version {config.get('format_version')!r}")
    try:
        check_config(config)
    except CheckpointError as err:
        raise CheckpointError(f"{config_path}: {err}") from None
    return config


def family_of(config: dict[str, Any]) -> Family:
    """The family of a checked config.json (`read_config`)."""
    return FAMILIES[config.get("family", FAMILY_OF_KIND[config["kind"]])]


def load_model(path: str | Path, device: str | torch.device = "cpu", kind: str | None = None) -> nn.Module:
    """Rebuild the network from `path`, load its weights strictly, move it to `device`, return it in eval().

    The returned module carries `.config` (its architecture dataclass) and `.meta` (CheckpointMeta).
    """
    config = read_config(path)
    meta = CheckpointMeta.from_json(config)
    if kind is not None and meta.kind != kind:
        raise CheckpointError(f"{path}: holds a {meta.kind}, expected a {kind}")
    try:
        model = build_network(meta.kind, config["arch"])
    except CheckpointError as err:
        raise CheckpointError(f"{Path(path) / CONFIG_FILE}: {err}") from None
    weights = Path(path) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: {WEIGHTS_FILE} is missing")
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises several types for corrupt files
        raise CheckpointError(f"{weights}: unreadable weights ({err})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{weights}: weights do not match the config ({str(err).splitlines()[0]})") from None
    model.meta = meta
    return model.to(device).eval()
