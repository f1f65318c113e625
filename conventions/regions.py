"""The BraTS segmentation label convention, in one place.

Labels: 1 NETC (non-enhancing tumour core), 2 ED (peritumoural oedema), 3 ET (enhancing tumour); 0 is everything
else. Evaluated regions are unions of labels: ET = {3}, TC (tumour core) = {1, 3}, WT (whole tumour) = {1, 2, 3}.
The tumour mask used by the BraSyn image metrics is ``seg > 0``.
"""
from __future__ import annotations

import numpy as np

NETC: int = 1
"""Non-enhancing tumour core."""
ED: int = 2
"""Peritumoural oedema (surrounding non-enhancing FLAIR hyperintensity)."""
ET: int = 3
"""Enhancing tumour."""

LABELS: dict[int, str] = {NETC: "NETC", ED: "ED", ET: "ET"}

REGIONS: dict[str, tuple[int, ...]] = {
    "ET": (ET,),
    "TC": (NETC, ET),
    "WT": (NETC, ED, ET),
}
"""Evaluated tumour regions (name -> labels they are made of), in the order BraTS reports them."""

REGION_NAMES: tuple[str, ...] = tuple(REGIONS)


def tumour_mask(seg: np.ndarray) -> np.ndarray:
    """Boolean tumour mask: every labelled voxel (``seg > 0``)."""
    return np.asarray(seg) > 0


def region_mask(seg: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of one named region (``"ET"``, ``"TC"`` or ``"WT"``) of a BraTS label map."""
    try:
        labels = REGIONS[region]
    except KeyError:
        raise ValueError(f"unknown region {region!r}; expected one of {', '.join(REGION_NAMES)}") from None
    return np.isin(np.asarray(seg), labels)


def region_masks(seg: np.ndarray, regions: tuple[str, ...] = REGION_NAMES) -> dict[str, np.ndarray]:
    """Boolean masks of several regions, keyed by region name."""
    return {name: region_mask(seg, name) for name in regions}


def regions_from_labels(seg: np.ndarray) -> np.ndarray:
    """(len(REGION_NAMES), ...) bool: the region masks of a label map, in `REGION_NAMES` order."""
    return np.stack([region_mask(seg, r) for r in REGION_NAMES])


def labels_from_regions(regions: np.ndarray) -> np.ndarray:
    """uint8 label map from (len(REGION_NAMES), ...) region masks (ET, TC, WT), nested as BraTS nests them:
    ET -> 3; TC without ET -> 1 (NETC); WT without TC -> 2 (ED). A voxel in ET or TC is tumour core whatever WT
    says, so the map never loses a voxel that a region claims."""
    et, tc, wt = (np.asarray(regions[REGION_NAMES.index(r)], dtype=bool) for r in ("ET", "TC", "WT"))
    labels = np.zeros(et.shape, dtype=np.uint8)
    labels[wt] = ED
    labels[tc] = NETC
    labels[et] = ET
    return labels
