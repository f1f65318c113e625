"""The volume cache of the volumetric models (3D refiner, full-3D generator).

`data.cache_dir/<case>/` holds `inputs.npy`, the M modalities normalised and cropped to the case's brain box
(float16, as the slice cache stores them); for a refiner, `synthesis-<target>.npy`, the frozen 2D generator's
normalised volume of each target made from the other modalities (float16, same box), taken from the engine's
refine hook (after stacking and view averaging, before background and denormalisation); and `meta.json`, written
last, so an interrupted case is redone. A cache made with other statistics or another generator is an error.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from infer.engine.slices import VolumePredictor
from infer.engine.intensity import normalize
from conventions.normalization import Normalization, norm_to_json
from models.checkpoint import WEIGHTS_FILE
from train.data.cache import brain_box, foreground_masks
from train.data.cases import TrainCase, load_case

CACHE_FORMAT = 1
META_FILE = "meta.json"
INPUTS_FILE = "inputs.npy"


def synthesis_file(target: str) -> str:
    return f"synthesis-{target}.npy"


@dataclass
class VolumeCase:
    """One cached case: normalised inputs (M, x, y, z) and the generator's synthesis per target modality
    (x, y, z), both float16 and memory-mapped."""

    name: str
    inputs: np.ndarray
    synthesis: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class GeneratorVolumes:
    """A frozen 2D generator whose normalised volumes are cached: its predictor (with a `capture` refine hook),
    that hook, the SHA-256 of its weights (which generator a cache holds), the target modalities and the input
    modalities of each target."""

    predictor: VolumePredictor
    capture: Capture
    sha256: str
    targets: tuple[str, ...]
    inputs: dict[str, tuple[str, ...]]


class Capture:
    """Refine hook that keeps a copy of the normalised synthesis it is given and returns it unchanged."""

    def __init__(self) -> None:
        self.volume: np.ndarray | None = None

    def __call__(self, synthesis: np.ndarray, inputs: np.ndarray, target: int) -> np.ndarray:
        self.volume = np.array(synthesis, dtype=np.float32)
        return synthesis


def weights_sha256(checkpoint: str | Path) -> str:
    digest = hashlib.sha256()
    with open(Path(checkpoint) / WEIGHTS_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        np.save(tmp, array)
    os.replace(tmp.name, path)


def _read_meta(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return meta if meta.get("format") == CACHE_FORMAT else None


def cache_case(case: TrainCase, folder: Path, modalities: Sequence[str], norms: Mapping[str, Normalization],
               generator: GeneratorVolumes | None) -> VolumeCase:
    """The cached volumes of `case` in `folder`, made (or completed with the generator's volumes) when missing."""
    norms_json = {m: norm_to_json(norms[m]) for m in modalities}
    meta = _read_meta(folder)
    if meta is not None and meta["normalization"] != norms_json:
        raise ValueError(f"{folder}: cached with other intensity statistics; use another data.cache_dir")
    if meta is not None and generator is not None and meta["generator"] not in (None, generator.sha256):
        raise ValueError(f"{folder}: holds another generator's volumes; use another data.cache_dir")
    if meta is None or (generator is not None and meta["generator"] is None):
        folder.mkdir(parents=True, exist_ok=True)
        volumes, _ = load_case(case, modalities)
        masks = foreground_masks(volumes, modalities, norms)
        box = brain_box(masks)
        _save_npy(folder / INPUTS_FILE, np.stack([normalize(volumes[m], norms[m], masks[i])[box]
                                                  for i, m in enumerate(modalities)])
                  .astype(np.float16))
        if generator is not None:
            for target in generator.targets:
                generator.predictor.predict({m: volumes[m] for m in generator.inputs[target]}, target)
                _save_npy(folder / synthesis_file(target), generator.capture.volume[box].astype(np.float16))
        meta = {"format": CACHE_FORMAT, "case": case.name, "modalities": list(modalities),
                "normalization": norms_json, "box": [[b.start, b.stop] for b in box],
                "generator": None if generator is None else generator.sha256}
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as tmp:
            json.dump(meta, tmp)
        os.replace(tmp.name, folder / META_FILE)
    synthesis = {}
    if generator is not None:
        synthesis = {m: np.load(folder / synthesis_file(m), mmap_mode="r") for m in generator.targets}
    return VolumeCase(case.name, np.load(folder / INPUTS_FILE, mmap_mode="r"), synthesis)


def cache_volumes(cases: Sequence[TrainCase], modalities: Sequence[str], norms: Mapping[str, Normalization],
                  cache_dir: str | Path, generator: GeneratorVolumes | None = None,
                  progress: bool = True) -> list[VolumeCase]:
    """`cache_case` for every case (cases already cached are read, not redone)."""
    return [cache_case(case, Path(cache_dir) / case.name, modalities, norms, generator)
            for case in tqdm(cases, desc="caching volumes", unit="case", disable=not progress)]
