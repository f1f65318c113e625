"""Image-similarity metrics for synthesised volumes: the BraSyn challenge SSIM, brain-only SSIM, PSNR, MAE, MSE.

Scale. Every metric here compares volumes on a common [0, 1] scale: each volume is normalised by its *own*
0.5th and 99.5th percentiles over the whole volume, background included (`percentile_normalize`), as the BraSyn
organisers' scoring does.

Challenge SSIM (`challenge_ssim`). With the tumour mask ``m = seg > 0``:
``ssim_tumour = SSIM(pred * m, ref * m)`` and ``ssim_healthy = SSIM(pred * (1 - m), ref * (1 - m))``, each the 3D
SSIM of torchmetrics' ``structural_similarity_index_measure`` with its default settings, averaged over the whole
volume. Because the (masked) background dominates, these sit close to 1 for almost any prediction (thesis,
Appendix A), so the brain-only variant is reported beside them.

Brain-only SSIM (`image_metrics`). The SSIM map of the two *unmasked* normalised volumes (so a region's score
sees its neighbourhood, as a reader would) averaged over the brain only (brain = reference voxels > 0), and over
each region: healthy brain (brain and not tumour), tumour, and ET/TC/WT when a segmentation exists.

SSIM implementation. `ssim_map` reproduces torchmetrics (version pinned in tests/requirements.txt, 1.9): a
Gaussian window of ``int(3.5 * sigma + 0.5) * 2 + 1`` taps (11 for sigma 1.5), reflect padding by half a window,
``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` with ``L = max(ptp(pred), ptp(target))`` when no data range is given, local
variances clamped at 0, and the mean over the full-size map (torchmetrics 1.9 no longer crops the border; older
releases cropped half a window at each border, which ``border_crop=5`` reproduces). The challenge scores use
`CHALLENGE_BORDER_CROP` = 5, the setting of the torchmetrics release the BraSyn organisers scored with. The 11^3 Gaussian is applied
as three 1D passes (shift-and-add in float32), and only on the bounding box of the voxels that are non-zero in
either input, grown by the window: a window that sees only zeros has SSIM exactly 1 (``C1 C2 / (C1 C2)``), in
torchmetrics too, so the result is the same while a BraTS volume takes about a second on a CPU.

Undefined cases (torchmetrics returns NaN for them), used consistently by every function here:
- both inputs constant (data range 0, e.g. both all zero): SSIM is 1.0 if they are identical, else 0.0;
- an empty region (empty tumour mask, no segmentation, an absent ET, an empty brain): the metric over that region
  is NaN ("not applicable"); NaNs are left out of summary statistics.
PSNR of identical volumes (MSE 0) is ``+inf``, not capped; PSNR uses the data range 1 of the [0, 1] scale.

Slice consistency (`slice_gradient_mae`). Slice-wise synthesis can stripe across the slice axis; the measure is
the mean absolute difference of the consecutive-slice differences, ``mean |d_z(pred) - d_z(ref)|`` over the
pairs of neighbouring brain voxels along the axial slice axis, on the [0, 1] scale: 0 when the prediction
changes from slice to slice as the reference does (a constant offset costs nothing), lower is better.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from infer.engine.intensity import foreground
from conventions.regions import REGION_NAMES, region_mask, tumour_mask
from conventions.tasks import VIEW_AXES

SSIM_SIGMA: float = 1.5
SSIM_K1: float = 0.01
SSIM_K2: float = 0.03
CHALLENGE_BORDER_CROP: int = 5
"""Voxels dropped at each border before averaging the challenge SSIM (the organisers' torchmetrics release)."""

IMAGE_METRICS: tuple[str, ...] = (
    "ssim_healthy",
    "ssim_tumour",
    "ssim_brain",
    "ssim_brain_healthy",
    "ssim_brain_tumour",
    *(f"ssim_brain_{r}" for r in REGION_NAMES),
    "psnr",
    "mae",
    "mse",
    "slice_gradient_mae",
)
"""Keys of `image_metrics`, in report order."""

FIELD_METRICS: tuple[str, ...] = ("ssim_field", "psnr_field", "mae_field", "mae_units", "edge_agreement")
"""Keys of `field_metrics` (tasks scored inside a head or field-of-view mask: mr2ct, us2mr)."""

EDGE_ALPHA: float = 0.02
"""Gradient magnitude (on the [0, 1] scale, per voxel) below which `edge_agreement` treats a voxel as flat."""


def percentile_normalize(volume: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Map a volume to [0, 1] by its own percentiles over the whole volume (background included).

    ``lo = max(percentile(lower), 0)``, ``hi = percentile(upper)``; output ``clip((v - lo) / (hi - lo), 0, 1)`` in
    float32. A volume with ``hi <= lo`` (constant, or almost all background) maps to all zeros.
    """
    v = np.asarray(volume, dtype=np.float32)
    lo, hi = np.percentile(v, [lower, upper])
    lo = max(float(lo), 0.0)
    hi = float(hi)
    if not hi > lo:
        return np.zeros(v.shape, dtype=np.float32)
    out = v - np.float32(lo)
    out /= np.float32(hi - lo)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def gaussian_window(sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """1D normalised Gaussian of ``int(3.5 * sigma + 0.5) * 2 + 1`` taps, as torchmetrics builds it (float32)."""
    size = int(3.5 * sigma + 0.5) * 2 + 1
    dist = torch.arange((1 - size) / 2, (1 + size) / 2, 1, dtype=torch.float32)
    g = torch.exp(-torch.pow(dist / sigma, 2) / 2)
    return g / g.sum()


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    if t.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {tuple(t.shape)}")
    return t


def filter_valid(x: torch.Tensor, window: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """'Valid' separable correlation of `x` with `window` along `dims` (each output dim shrinks by len-1)."""
    taps = [float(w) for w in window]
    out = x
    for d in dims:
        n = out.shape[d] - len(taps) + 1
        acc = out.narrow(d, 0, n) * taps[0]
        for k in range(1, len(taps)):
            acc.add_(out.narrow(d, k, n), alpha=taps[k])
        out = acc
    return out


def _minmax(t: torch.Tensor) -> tuple[float, float]:
    lo, hi = torch.aminmax(t)
    return float(lo), float(hi)


def data_range_of(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """torchmetrics' default data range: ``max(pred.max() - pred.min(), target.max() - target.min())``."""
    (plo, phi), (tlo, thi) = _minmax(_as_tensor(pred)), _minmax(_as_tensor(target))
    return float(max(np.float32(phi) - np.float32(plo), np.float32(thi) - np.float32(tlo)))


class _SSIMMap:
    """An SSIM map stored as the box where it was computed; every voxel outside the box has the value `fill`."""

    def __init__(self, shape: tuple[int, ...], block: torch.Tensor | None, box: tuple[slice, ...], fill: float):
        self.shape, self.block, self.box, self.fill = shape, block, box, fill

    def full(self) -> torch.Tensor:
        out = torch.full(self.shape, self.fill, dtype=torch.float32)
        if self.block is not None:
            out[self.box] = self.block
        return out

    def mean(self, mask: np.ndarray | None = None) -> float:
        """Mean over the whole map or over a boolean `mask` (NaN if the mask is empty)."""
        if mask is None:
            n = math.prod(self.shape)
            if self.block is None:
                return float(self.fill)
            inside = self.block.sum(dtype=torch.float64).item()
            return (inside + self.fill * (n - self.block.numel())) / n
        m = np.asarray(mask, dtype=bool)
        if m.shape != tuple(self.shape):
            raise ValueError(f"mask shape {m.shape} does not match the image shape {tuple(self.shape)}")
        n = int(np.count_nonzero(m))
        if n == 0:
            return math.nan
        if self.block is None:
            return float(self.fill)
        m_in = torch.from_numpy(np.ascontiguousarray(m[self.box]))
        n_in = int(m_in.sum())
        inside = self.block[m_in].sum(dtype=torch.float64).item() if n_in else 0.0
        return (inside + self.fill * (n - n_in)) / n

    def crop(self, c: int) -> tuple[_SSIMMap, tuple[slice, ...]]:
        """This map without `c` voxels at each border, and the slices that crop a matching mask."""
        sl = tuple(slice(c, n - c) for n in self.shape)
        return _SSIMMap(tuple(n - 2 * c for n in self.shape), self.full()[sl], tuple(slice(None) for _ in sl),
                        self.fill), sl


def _support_box(x: torch.Tensor, y: torch.Tensor, pad: int) -> tuple[slice, ...] | None:
    """Bounding box of the voxels non-zero in x or y, grown by `pad` and clipped to the volume; None if none."""
    support = (x != 0) | (y != 0)
    box = []
    for d in range(3):
        other = tuple(i for i in range(3) if i != d)
        idx = torch.nonzero(support.any(dim=other)).flatten()
        if idx.numel() == 0:
            return None
        box.append(slice(max(int(idx[0]) - pad, 0), min(int(idx[-1]) + 1 + pad, x.shape[d])))
    return tuple(box)


def _padded_block(x: torch.Tensor, box: tuple[slice, ...], pad: int) -> torch.Tensor:
    """`box` grown by `pad` on every side: real neighbours inside the volume, reflect padding beyond its border
    (what torchmetrics' reflect padding of the whole volume gives there)."""
    src, amounts = [], []
    for sl, n in zip(box, x.shape):
        a, b = max(sl.start - pad, 0), min(sl.stop + pad, n)
        src.append(slice(a, b))
        amounts.append((pad - (sl.start - a), pad - (b - sl.stop)))
    block = x[tuple(src)]
    if any(v for pair in amounts for v in pair):
        if any(s.stop - s.start <= max(pair) for s, pair in zip(src, amounts)):
            # Too thin to reflect locally (tiny volume): reflect-pad the whole volume instead.
            full = F.pad(x[None, None], (pad,) * 6, mode="reflect")[0, 0]
            return full[tuple(slice(sl.start, sl.stop + 2 * pad) for sl in box)]
        flat = [v for pair in reversed(amounts) for v in pair]  # F.pad lists the last dimension first
        block = F.pad(block[None, None], flat, mode="reflect")[0, 0]
    return block


def _ssim(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    data_range: float | None = None,
    sigma: float = SSIM_SIGMA,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> _SSIMMap:
    x, y = _as_tensor(pred), _as_tensor(target)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: pred {tuple(x.shape)} vs target {tuple(y.shape)}")
    shape = tuple(x.shape)
    if data_range is None:
        data_range = data_range_of(x, y)
    if data_range <= 0:
        return _SSIMMap(shape, None, (), 1.0 if torch.equal(x, y) else 0.0)
    window = gaussian_window(sigma)
    pad = (len(window) - 1) // 2
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    # Outside the support grown by half a window every window sees only zeros: SSIM = (C1 C2) / (C1 C2) = 1.
    box = _support_box(x, y, pad)
    if box is None:
        return _SSIMMap(shape, None, (), 1.0)
    xs, ys = _padded_block(x, box, pad), _padded_block(y, box, pad)
    moments = torch.stack([xs, ys, xs * xs, ys * ys, xs * ys])
    del xs, ys
    mu_x, mu_y, e_xx, e_yy, e_xy = filter_valid(moments, window, (1, 2, 3))
    del moments
    mu_xx = mu_x * mu_x
    mu_yy = mu_y * mu_y
    mu_xy = mu_x * mu_y
    var_x = torch.clamp(e_xx - mu_xx, min=0.0)
    var_y = torch.clamp(e_yy - mu_yy, min=0.0)
    cov = e_xy - mu_xy
    upper = 2 * cov + c2
    lower = (var_x + var_y) + c2
    block = ((2 * mu_xy + c1) * upper) / ((mu_xx + mu_yy + c1) * lower)
    return _SSIMMap(shape, block, box, 1.0)


def ssim_map(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    data_range: float | None = None,
    sigma: float = SSIM_SIGMA,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> torch.Tensor:
    """Voxel-wise 3D SSIM map (float32, same shape as the inputs), equal to torchmetrics' full SSIM image.

    `data_range` None: torchmetrics' default (`data_range_of`). Both inputs constant (range 0): a map of ones
    if they are identical, of zeros otherwise (torchmetrics: NaN).
    """
    return _ssim(pred, target, data_range, sigma, k1, k2).full()


def ssim(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    mask: np.ndarray | None = None,
    data_range: float | None = None,
    border_crop: int = 0,
    sigma: float = SSIM_SIGMA,
    k1: float = SSIM_K1,
    k2: float = SSIM_K2,
) -> float:
    """Mean 3D SSIM (torchmetrics' default settings) over the whole volume, or over `mask` (NaN if it is empty).

    `border_crop` drops that many voxels at each border before averaging (0 = torchmetrics 1.9; 5 = releases that
    cropped half a window).
    """
    smap = _ssim(pred, target, data_range=data_range, sigma=sigma, k1=k1, k2=k2)
    if border_crop:
        smap, sl = smap.crop(int(border_crop))
        if mask is not None:
            mask = np.asarray(mask)[sl]
    return smap.mean(mask)


def challenge_ssim(
    pred: np.ndarray,
    reference: np.ndarray,
    seg: np.ndarray | None,
    border_crop: int = CHALLENGE_BORDER_CROP,
    normalized: bool = False,
) -> dict[str, float]:
    """The BraSyn scoring SSIM: ``{"ssim_healthy": ..., "ssim_tumour": ...}``.

    Both volumes are percentile-normalised (skipped when `normalized`), the tumour mask is ``seg > 0`` and each
    score is the whole-volume mean SSIM of the masked pair (see the module docstring). Empty tumour mask or no
    segmentation: ``ssim_tumour`` is NaN and ``ssim_healthy`` is the SSIM of the unmasked volumes.
    """
    p = pred if normalized else percentile_normalize(pred)
    r = reference if normalized else percentile_normalize(reference)
    tumour = np.zeros(r.shape, dtype=bool) if seg is None else tumour_mask(seg)
    return _challenge_ssim(p, r, tumour, border_crop)


def _challenge_ssim(p: np.ndarray, r: np.ndarray, tumour: np.ndarray, border_crop: int) -> dict[str, float]:
    m = tumour.astype(np.float32)
    out = {"ssim_healthy": math.nan, "ssim_tumour": math.nan}
    if tumour.any():
        out["ssim_tumour"] = ssim(p * m, r * m, border_crop=border_crop)
    if not tumour.all():
        h = 1.0 - m
        out["ssim_healthy"] = ssim(p * h, r * h, border_crop=border_crop)
    return out


def mse(pred: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error (float64 accumulation) over `mask` (NaN if empty) or the whole volume."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    if mask is not None:
        d = d[np.asarray(mask, dtype=bool)]
    return float(np.mean(d * d)) if d.size else math.nan


def mae(pred: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error (float64 accumulation) over `mask` (NaN if empty) or the whole volume."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    if mask is not None:
        d = d[np.asarray(mask, dtype=bool)]
    return float(np.mean(np.abs(d))) if d.size else math.nan


def psnr_from_mse(mse_value: float, data_range: float = 1.0) -> float:
    """``10 log10(data_range^2 / MSE)``; ``+inf`` for MSE 0 (identical volumes), NaN for NaN."""
    if math.isnan(mse_value):
        return math.nan
    if mse_value <= 0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse_value)


def psnr(pred: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None, data_range: float = 1.0) -> float:
    """PSNR over `mask` (or the whole volume); ``+inf`` for identical volumes (see `psnr_from_mse`)."""
    return psnr_from_mse(mse(pred, reference, mask), data_range)


def slice_gradient_mae(pred: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
                       axis: int = VIEW_AXES["axial"]) -> float:
    """``mean |d(pred) - d(reference)|`` of the differences between consecutive slices along `axis`, over the
    voxel pairs both inside `mask` (NaN if none) or over all pairs (float64 accumulation)."""
    d = np.diff(np.asarray(pred, dtype=np.float64) - np.asarray(reference, dtype=np.float64), axis=axis)
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        d = d[np.take(m, range(m.shape[axis] - 1), axis=axis) & np.take(m, range(1, m.shape[axis]), axis=axis)]
    return float(np.mean(np.abs(d))) if d.size else math.nan


def edge_agreement(pred: np.ndarray, reference: np.ndarray, mask: np.ndarray, alpha: float = EDGE_ALPHA) -> float:
    """Mean over `mask` of <grad p, grad r>^2 / ((|grad p|^2 + alpha^2)(|grad r|^2 + alpha^2)): 1 where the 3D
    edges are parallel and strong, 0 where they cross or either volume is flat (1 - the NGF distance)."""
    gp = np.gradient(np.asarray(pred, dtype=np.float32))
    gr = np.gradient(np.asarray(reference, dtype=np.float32))
    dot = sum(a * b for a, b in zip(gp, gr))
    norm_p = sum(a * a for a in gp) + alpha ** 2
    norm_r = sum(b * b for b in gr) + alpha ** 2
    return float(np.mean((dot * dot / (norm_p * norm_r))[mask]))


def field_metrics(pred: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """The keys of `FIELD_METRICS` for a synthesis scored inside `mask` (the head for CT, the ultrasound's field
    of view for MR from ultrasound).

    Both volumes are put on one [0, 1] scale, the reference's 0.5th-99.5th percentile inside the mask (clipped);
    ``ssim_field`` = the 3D SSIM map averaged over the mask, ``psnr_field``/``mae_field`` on that scale,
    ``mae_units`` in the volumes' own units (Hounsfield units for CT), ``edge_agreement`` as `edge_agreement`.
    """
    pred = np.asarray(pred, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    if pred.shape != reference.shape or mask.shape != reference.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape}, reference {reference.shape}, mask {mask.shape}")
    if not mask.any():
        raise ValueError("empty mask")
    lo, hi = np.percentile(reference[mask], [0.5, 99.5])
    scale = np.float32(max(float(hi - lo), 1e-6))
    p = np.clip((pred - np.float32(lo)) / scale, 0.0, 1.0)
    r = np.clip((reference - np.float32(lo)) / scale, 0.0, 1.0)
    err = mse(p, r, mask)
    return {"ssim_field": _ssim(p, r, data_range=1.0).mean(mask), "psnr_field": psnr_from_mse(err),
            "mae_field": mae(p, r, mask), "mae_units": mae(pred, reference, mask),
            "edge_agreement": edge_agreement(p, r, mask)}


def image_metrics(
    pred: np.ndarray,
    reference: np.ndarray,
    seg: np.ndarray | None = None,
    border_crop: int = CHALLENGE_BORDER_CROP,
) -> dict[str, float]:
    """Every image metric of one synthesised volume against its reference (raw intensities, same shape).

    Returns the keys of `IMAGE_METRICS`: challenge ``ssim_healthy``/``ssim_tumour``; brain-only ``ssim_brain``
    and its regions (``ssim_brain_healthy``, ``ssim_brain_tumour``, ``ssim_brain_ET``/``TC``/``WT``; NaN where
    the region is empty or there is no `seg`); ``psnr``, ``mae``, ``mse`` and ``slice_gradient_mae`` over the
    brain on the [0, 1] scale.
    The brain is ``reference > 0``. Usable from training validation on numpy volumes.
    """
    pred = np.asarray(pred)
    reference = np.asarray(reference)
    if pred.shape != reference.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs reference {reference.shape}")
    if seg is not None and np.shape(seg) != reference.shape:
        raise ValueError(f"shape mismatch: segmentation {np.shape(seg)} vs reference {reference.shape}")
    p = percentile_normalize(pred)
    r = percentile_normalize(reference)
    brain = foreground(reference)
    tumour = np.zeros(reference.shape, dtype=bool) if seg is None else tumour_mask(seg)

    out: dict[str, float] = dict(_challenge_ssim(p, r, tumour, border_crop))
    smap = _ssim(p, r)
    out["ssim_brain"] = smap.mean(brain)
    out["ssim_brain_healthy"] = smap.mean(brain & ~tumour)
    out["ssim_brain_tumour"] = smap.mean(tumour) if seg is not None else math.nan
    for name in REGION_NAMES:
        out[f"ssim_brain_{name}"] = smap.mean(region_mask(seg, name)) if seg is not None else math.nan
    err = mse(p, r, brain)
    out["psnr"] = psnr_from_mse(err)
    out["mae"] = mae(p, r, brain)
    out["mse"] = err
    out["slice_gradient_mae"] = slice_gradient_mae(p, r, brain)
    return {k: out[k] for k in IMAGE_METRICS}
