"""Slice dataset: prepared case slabs -> square training slices, with the inference padding rule.

A sample is one slice of one case and view: its 2k+1 neighbours per modality, padded to `slice_size` with
`infer.engine.geometry.pad_to_square` (what the inference engine does), then, when the network is smaller than
that, a `crop` x `crop` window around a random brain pixel (seeded by (seed, index, epoch), so the same key
always gives the same crop).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset

from infer.engine.geometry import pad_to_square
from conventions.tasks import VIEWS
from train.data.cache import CaseSlabs


def select_slices(slabs: Sequence[CaseSlabs], min_brain_pixels: int, min_tumour_pixels: int = 0) -> np.ndarray:
    """(n, 2) array of (slab index, slice index) of the slices that pass both filters."""
    rows = []
    for i, slab in enumerate(slabs):
        keep = (slab.brain_pixels >= min_brain_pixels) & (slab.tumour_pixels >= min_tumour_pixels)
        local = np.flatnonzero(keep)
        rows.append(np.stack([np.full(len(local), i), local + slab.origin[0]], axis=1))
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), dtype=np.int64)


class SliceDataset(Dataset):
    """Samples {"image": (M*(2k+1), S, S) float32, "seg": (S, S) int64, "view": int} with S = `crop` or
    `slice_size`. Keys are an index or (index, epoch) (see `train.data.sampler.ShardedBatches`)."""

    def __init__(self, slabs: Sequence[CaseSlabs], context: int, slice_size: int, fill: float,
                 min_brain_pixels: int, min_tumour_pixels: int = 0, crop: int | None = None, seed: int = 0) -> None:
        if crop is not None and crop > slice_size:
            raise ValueError(f"crop {crop} exceeds the slice size {slice_size}")
        self.slabs = list(slabs)
        self.items = select_slices(self.slabs, min_brain_pixels, min_tumour_pixels)
        if len(self.items) == 0:
            raise ValueError(f"no slice passes the filters (min_brain_pixels {min_brain_pixels}, "
                             f"min_tumour_pixels {min_tumour_pixels}) in {len(self.slabs)} case view(s)")
        self.context, self.slice_size, self.fill, self.crop, self.seed = context, slice_size, fill, crop, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, np.ndarray | int]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        slab_index, slice_index = self.items[index]
        slab = self.slabs[slab_index]
        image, seg = slab.full_slices(int(slice_index), self.context, self.fill)
        image = pad_to_square(image, self.slice_size, self.fill)
        seg = pad_to_square(seg, self.slice_size, 0)
        if self.crop is not None and self.crop < self.slice_size:
            rng = np.random.default_rng([self.seed, index, epoch])
            brain = image[self.context] > self.fill  # centre slice of the first modality
            top, left = self._crop_origin(brain, rng)
            image = image[:, top:top + self.crop, left:left + self.crop]
            seg = seg[top:top + self.crop, left:left + self.crop]
        return {"image": np.ascontiguousarray(image), "seg": seg.astype(np.int64), "view": VIEWS.index(slab.view)}

    def _crop_origin(self, brain: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left corner of a crop centred on a random brain pixel, shifted to stay inside the slice."""
        rows, cols = np.nonzero(brain)
        pick = rng.integers(len(rows)) if len(rows) else None
        centre = (rows[pick], cols[pick]) if pick is not None else (self.slice_size // 2,) * 2
        limit = self.slice_size - self.crop
        return tuple(int(np.clip(c - self.crop // 2, 0, limit)) for c in centre)
