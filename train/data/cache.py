"""Prepared slices: each case normalised once, cropped to its brain bounding box and stored per view.

A `CaseSlabs` holds, for one case and view, the normalised slices of the box (N, M, h, w) in float16 (the
normalised range is a few units, where float16 keeps about three decimals), the label slices (N, h, w) uint8,
where the box sits in the full volume, and per-slice foreground and tumour pixel counts for filtering.
Everything outside the box is background in every modality, so a full slice is rebuilt exactly by
`full_slices` (the box placed on a background canvas) before the shared padding rule is applied.

On disk (`cache_dir/<case>/`): `<view>.npy`, `<view>-seg.npy` (memory-mapped when read) and `meta.json`,
written last, so an interrupted preparation is redone. A cache prepared with other statistics is an error.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from infer.engine.geometry import bounding_box, in_plane_shape, to_slices, view_axis, with_context
from infer.engine.intensity import foreground, normalize
from conventions.normalization import Normalization, norm_to_json
from train.data.cases import TrainCase, load_case

CACHE_FORMAT = 1
META_FILE = "meta.json"


@dataclass
class CaseSlabs:
    """One case along one view (see the module docstring). `origin` = box start along (slice, row, column);
    `shape` = full (N, H, W) of the view's slices."""

    case: str
    view: str
    images: np.ndarray
    seg: np.ndarray | None
    origin: tuple[int, int, int]
    shape: tuple[int, int, int]
    brain_pixels: np.ndarray
    tumour_pixels: np.ndarray

    def full_slices(self, index: int, context: int, fill: float) -> tuple[np.ndarray, np.ndarray]:
        """Full-size slice `index` with `context` neighbours per modality, (M*(2k+1), H, W) float32, and its
        label slice (H, W) uint8 (zeros without a segmentation)."""
        n, h, w = self.shape
        o_n, o_h, o_w = self.origin
        box_h, box_w = self.images.shape[-2:]
        box = with_context(self.images, np.array([index - o_n]), context, fill)[0]
        image = np.full((box.shape[0], h, w), fill, dtype=np.float32)
        image[:, o_h:o_h + box_h, o_w:o_w + box_w] = box
        seg = np.zeros((h, w), dtype=np.uint8)
        if self.seg is not None and 0 <= index - o_n < len(self.seg):
            seg[o_h:o_h + box_h, o_w:o_w + box_w] = self.seg[index - o_n]
        return image, seg


def foreground_masks(volumes: Mapping[str, np.ndarray], modalities: Sequence[str],
                     norms: Mapping[str, Normalization]) -> np.ndarray:
    """(M, X, Y, Z) bool: each modality's foreground under its normalisation."""
    return np.stack([foreground(volumes[m], norms[m]) for m in modalities])


def brain_box(masks: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box of the voxels that are foreground in any modality of (M, X, Y, Z) foreground masks."""
    try:
        return bounding_box(masks.any(axis=0))
    except ValueError:
        raise ValueError("no foreground voxel in any modality") from None


def prepare_case(case: TrainCase, modalities: Sequence[str], norms: Mapping[str, Normalization],
                 views: Sequence[str]) -> list[CaseSlabs]:
    """Read, normalise and slice one case: one `CaseSlabs` per view."""
    volumes, seg = load_case(case, modalities)
    masks = foreground_masks(volumes, modalities, norms)
    box = brain_box(masks)
    norm = np.stack([normalize(volumes[m], norms[m], masks[i])[box] for i, m in enumerate(modalities)])
    brain = masks[(slice(None), *box)]
    seg_box = seg[box] if seg is not None else None
    out = []
    for view in views:
        axis = view_axis(view)
        in_plane = [b.start for a, b in enumerate(box) if a != axis]
        brain_per_slice = to_slices(brain, view).sum(axis=(2, 3)).min(axis=1)
        tumour = to_slices(seg_box > 0, view).sum(axis=(1, 2)) if seg_box is not None \
            else np.zeros(len(brain_per_slice), dtype=np.int64)
        out.append(CaseSlabs(
            case=case.name, view=view,
            images=np.ascontiguousarray(to_slices(norm, view), dtype=np.float16),
            seg=None if seg_box is None else np.ascontiguousarray(to_slices(seg_box, view)),
            origin=(box[axis].start, *in_plane),
            shape=(masks.shape[1 + axis], *in_plane_shape(masks.shape[1:], view)),
            brain_pixels=brain_per_slice.astype(np.int64), tumour_pixels=tumour.astype(np.int64)))
    return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        np.save(tmp, array)
    os.replace(tmp.name, path)


def _norm_json(norms: Mapping[str, Normalization], modalities: Sequence[str]) -> dict:
    return {m: norm_to_json(norms[m]) for m in modalities}


def write_case(folder: Path, slabs: Sequence[CaseSlabs], norms_json: dict) -> None:
    """Store `slabs` (one case), keeping views cached earlier with the same statistics."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        old = json.loads((folder / META_FILE).read_text())
        views = old["views"] if old.get("format") == CACHE_FORMAT and old["normalization"] == norms_json else {}
    except (FileNotFoundError, json.JSONDecodeError):
        views = {}
    for s in slabs:
        _save_npy(folder / f"{s.view}.npy", s.images)
        if s.seg is not None:
            _save_npy(folder / f"{s.view}-seg.npy", s.seg)
        views[s.view] = {"origin": list(s.origin), "shape": list(s.shape), "brain_pixels": s.brain_pixels.tolist(),
                         "tumour_pixels": s.tumour_pixels.tolist(), "has_seg": s.seg is not None}
    meta = {"format": CACHE_FORMAT, "case": slabs[0].case, "normalization": norms_json, "views": views}
    with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as tmp:
        json.dump(meta, tmp)
    os.replace(tmp.name, folder / META_FILE)


def read_case(folder: Path, views: Sequence[str], norms_json: dict) -> list[CaseSlabs] | None:
    """The cached slabs of `views` (memory-mapped), or None when the case is absent or lacks a view."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if meta.get("format") != CACHE_FORMAT or any(v not in meta["views"] for v in views):
        return None
    if meta["normalization"] != norms_json:
        raise ValueError(f"{folder}: cache was prepared with other intensity statistics; use another data.cache_dir")
    out = []
    for view in views:
        v = meta["views"][view]
        seg = np.load(folder / f"{view}-seg.npy", mmap_mode="r") if v["has_seg"] else None
        out.append(CaseSlabs(meta["case"], view, np.load(folder / f"{view}.npy", mmap_mode="r"), seg,
                             tuple(v["origin"]), tuple(v["shape"]), np.asarray(v["brain_pixels"]),
                             np.asarray(v["tumour_pixels"])))
    return out


def load_slabs(cases: Sequence[TrainCase], modalities: Sequence[str], norms: Mapping[str, Normalization],
               views: Sequence[str], cache_dir: str | Path | None, progress: bool = True) -> list[CaseSlabs]:
    """Slabs of every case and view: read from `cache_dir` (preparing what is missing), or prepared in memory
    when `cache_dir` is None."""
    norms_json = _norm_json(norms, modalities)
    out: list[CaseSlabs] = []
    for case in tqdm(cases, desc="preparing slices", unit="case", disable=not progress):
        if cache_dir is None:
            out += prepare_case(case, modalities, norms, views)
            continue
        folder = Path(cache_dir) / case.name
        slabs = read_case(folder, views, norms_json)
        if slabs is None:
            write_case(folder, prepare_case(case, modalities, norms, views), norms_json)
            slabs = read_case(folder, views, norms_json)
        out += slabs
    return out
