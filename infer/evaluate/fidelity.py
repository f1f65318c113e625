"""Document 000's image-fidelity protocol (section 2.6) for one synthesised volume against its reference.

Both volumes on their own [0, 1] scale (`infer.evaluate.metrics.percentile_normalize`); foreground = the
reference's foreground (`infer.engine.intensity.foreground`: > 0). SSIM: 2D SSIM (Gaussian window 11, sigma 1.5,
k1 0.01, k2 0.03, data range 1; as MONAI's `compute_ssim_and_cs`) of each axial slice (last array axis) holding at
least 1 % foreground, averaged over those slices. PSNR and MAE: over the foreground voxels. LPIPS: the same
slices (`infer.evaluate.lpips.volume_lpips`), or None (not computed) without its weights.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from infer.engine.intensity import foreground
from infer.evaluate.lpips import LPIPS, foreground_slices, volume_lpips
from infer.evaluate.metrics import (SSIM_K1, SSIM_K2, filter_valid, gaussian_window, mae, percentile_normalize,
                                    psnr)

FIDELITY_METRICS: tuple[str, ...] = ("ssim", "psnr", "mae", "lpips")
"""Keys of `fidelity_metrics`, in report order."""
LOWER_IS_BETTER: frozenset[str] = frozenset({"mae", "lpips"})


def slice_ssim(pred01: np.ndarray, ref01: np.ndarray, mask: np.ndarray) -> float:
    """Mean 2D SSIM over the foreground axial slices of two volumes on [0, 1] (NaN when there are none).

    Each slice's SSIM is the mean of its map over the positions where the whole window fits, as MONAI's
    `compute_ssim_and_cs` computes it; the Gaussian is applied as two 1D passes (the same numbers, about five
    times fewer operations on 240 x 240 slices)."""
    index = foreground_slices(mask)
    if index.size == 0:
        return math.nan
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(pred01[..., index], -1, 0)))
    y = torch.from_numpy(np.ascontiguousarray(np.moveaxis(ref01[..., index], -1, 0)))
    mu_x, mu_y, e_xx, e_yy, e_xy = filter_valid(torch.stack([x, y, x * x, y * y, x * y]), gaussian_window(), (2, 3))
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2  # data range 1
    var_x, var_y, cov = e_xx - mu_x * mu_x, e_yy - mu_y * mu_y, e_xy - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return float(ssim.mean(dim=(1, 2)).mean())


def fidelity_metrics(pred: np.ndarray, reference: np.ndarray, lpips: LPIPS | None = None
                     ) -> dict[str, float | None]:
    """The keys of `FIDELITY_METRICS` for raw volumes of the same shape; ``lpips`` is None without a model."""
    if pred.shape != reference.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs reference {reference.shape}")
    p, r = percentile_normalize(pred), percentile_normalize(reference)
    mask = foreground(np.asarray(reference))
    return {"ssim": slice_ssim(p, r, mask), "psnr": psnr(p, r, mask), "mae": mae(p, r, mask),
            "lpips": None if lpips is None else volume_lpips(lpips, pred, reference, mask)}
