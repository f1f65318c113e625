"""Slice geometry: volumes to slices and back, square padding, neighbouring-slice context.

This is the one place for the padding rule (used by inference and training alike): a side of length n is
padded to S with total = S - n, before = total // 2, after = total - before (155 -> 240: 42 before, 43 after),
with the background value. The view convention (which axis a view slices along) is `conventions.tasks.VIEW_AXES`.

Arrays are numpy; volumes are (..., X, Y, Z) and slices (N, ..., H, W), where `...` is any leading shape
(for example the modality axis).
"""
from __future__ import annotations

import numpy as np

from conventions.tasks import VIEW_AXES


def view_axis(view: str) -> int:
    """Spatial axis (0, 1 or 2 of X, Y, Z) that `view` slices along."""
    try:
        return VIEW_AXES[view]
    except KeyError:
        raise ValueError(f"unknown view {view!r}; known: {', '.join(VIEW_AXES)}") from None


def to_slices(volume: np.ndarray, view: str) -> np.ndarray:
    """(..., X, Y, Z) -> (N, ..., H, W): the slices of `view`, as a view of `volume` (no copy)."""
    return np.moveaxis(volume, volume.ndim - 3 + view_axis(view), 0)


def from_slices(slices: np.ndarray, view: str) -> np.ndarray:
    """Inverse of `to_slices`: (N, ..., H, W) -> (..., X, Y, Z)."""
    return np.moveaxis(slices, 0, slices.ndim - 3 + view_axis(view))


def in_plane_shape(shape: tuple[int, int, int], view: str) -> tuple[int, int]:
    """(H, W) of the slices of `view` through a volume of spatial `shape` (X, Y, Z)."""
    axis = view_axis(view)
    h, w = (n for i, n in enumerate(shape) if i != axis)
    return h, w


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box (one slice per axis) holding every True voxel of `mask`; ValueError when there is none."""
    if not mask.any():
        raise ValueError("no foreground voxel")
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def pad_amounts(n: int, size: int) -> tuple[int, int]:
    """(before, after) padding that brings a side of length `n` to `size`."""
    if n > size:
        raise ValueError(f"a side of {n} voxels does not fit in {size}")
    total = size - n
    before = total // 2
    return before, total - before


def pad_to_square(slices: np.ndarray, size: int, value: float) -> np.ndarray:
    """Pad the last two axes (H, W) to `size` x `size` with `value` (a new array)."""
    h, w = slices.shape[-2:]
    pad = [(0, 0)] * (slices.ndim - 2) + [pad_amounts(h, size), pad_amounts(w, size)]
    return np.pad(slices, pad, mode="constant", constant_values=value)


def crop_from_square(slices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of `pad_to_square`: crop the last two axes back to `shape` (H, W) (a view)."""
    size_h, size_w = slices.shape[-2:]
    (top, _), (left, _) = pad_amounts(shape[0], size_h), pad_amounts(shape[1], size_w)
    return slices[..., top:top + shape[0], left:left + shape[1]]


def with_context(slices: np.ndarray, index: np.ndarray, k: int, value: float) -> np.ndarray:
    """Slices `index` of (N, M, H, W), each with its 2k+1 neighbours per modality: (B, M*(2k+1), H, W).

    Channels are modality-major (modality m's slices i-k .. i+k are channels m*(2k+1) .. m*(2k+1)+2k, the centre
    slice in the middle); neighbours outside the volume are filled with `value`. k = 0 gives the slices as is.
    """
    n, m, h, w = slices.shape
    neighbours = np.asarray(index)[:, None] + np.arange(-k, k + 1)[None, :]  # (B, 2k+1)
    out = slices[np.clip(neighbours, 0, n - 1)]  # (B, 2k+1, M, H, W), a copy
    out[(neighbours < 0) | (neighbours >= n)] = value
    return out.transpose(0, 2, 1, 3, 4).reshape(len(neighbours), m * (2 * k + 1), h, w)


def signal_box(inputs: np.ndarray, fill: float) -> tuple[slice, slice, slice]:
    """Bounding box of the voxels where any channel of (C, X, Y, Z) differs from `fill` (all of it if none)."""
    signal = (inputs != fill).any(axis=0)
    if not signal.any():
        return tuple(slice(0, n) for n in signal.shape)
    box = []
    for axis in range(3):
        hit = np.flatnonzero(signal.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)
