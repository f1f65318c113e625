"""Generator and discriminator loss terms; the loop weights them with `train.config.LossConfig`.

L1 reconstruction / cycle and the modality classification are `torch.nn.L1Loss` / `torch.nn.CrossEntropyLoss`
used as they are; the terms below are the ones that need more than a built-in.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import TverskyLoss
from monai.metrics.regression import compute_ssim_and_cs
from torch import nn


class AdversarialLoss(nn.Module):
    """Binary cross-entropy with logits of a patch map against all-real (1) or all-fake (0) labels."""

    def forward(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(logits) if real else torch.zeros_like(logits)
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())


class FeatureCosineLoss(nn.Module):
    """1 - cosine similarity of two feature tensors, each sample flattened, averaged over the batch
    (0 for parallel features, 1 for orthogonal, 2 for opposite)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (1.0 - F.cosine_similarity(a.flatten(1).float(), b.flatten(1).float(), dim=1)).mean()


class MaskedSSIMLoss(nn.Module):
    """1 - SSIM averaged over the pixels of a mask (e.g. brain, healthy brain, tumour), per region, then the
    mean over the regions that are non-empty in the batch (0 when all are empty).

    The SSIM map is MONAI's `compute_ssim_and_cs` (Gaussian window `kernel_size`, `sigma`; k1, k2) on inputs
    reflect-padded by half a window, so the map has the input's size, as torchmetrics' full SSIM image does.
    The data range is the batch's target range (detached). Always computed in float32 with autocast off.
    """

    def __init__(self, kernel_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> None:
        super().__init__()
        self.kernel_size, self.sigma, self.k1, self.k2 = kernel_size, sigma, k1, k2

    def ssim_map(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Full-size SSIM map of (B, 1, H, W) inputs, float32."""
        with torch.autocast(pred.device.type, enabled=False):
            pred, target = pred.float(), target.float()
            data_range = float((target.max() - target.min()).detach()) or 1.0
            pad = self.kernel_size // 2
            padded = F.pad(torch.cat([pred, target]), (pad,) * 4, mode="reflect")
            p, t = padded.chunk(2)
            smap, _ = compute_ssim_and_cs(p, t, spatial_dims=2, kernel_size=[self.kernel_size] * 2,
                                          kernel_sigma=[self.sigma] * 2, data_range=data_range, k1=self.k1, k2=self.k2)
        return smap

    def forward(self, pred: torch.Tensor, target: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        smap = self.ssim_map(pred, target)
        terms = []
        for mask in masks:
            m = mask.to(smap.dtype)
            count = m.sum()
            if count > 0:
                terms.append(1.0 - (smap * m).sum() / count)
        return torch.stack(terms).mean() if terms else smap.new_zeros(())


class FocalTverskyLoss(nn.Module):
    """Focal Tversky loss of class logits (B, C, H, W) against integer labels (B, H, W).

    Per class c the Tversky index TI_c = (TP + s) / (TP + alpha FP + beta FN + s) of the softmax probabilities
    (MONAI `TverskyLoss`, counts pooled over the batch when `batch`); the loss is sum_c (1 - TI_c)^gamma over
    all classes, background included (Abraham & Khan 2019), averaged over samples when not `batch`.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75, batch: bool = True) -> None:
        super().__init__()
        self.gamma = gamma
        self.tversky = TverskyLoss(to_onehot_y=True, softmax=True, alpha=alpha, beta=beta, reduction="none",
                                   batch=batch)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            score = self.tversky(logits.float(), labels[:, None].long())  # 1 - TI: (B, C), or (C,) when batch
        return score.clamp_min(1e-6).pow(self.gamma).reshape(-1, logits.shape[1]).sum(dim=1).mean()


class NGFLoss(nn.Module):
    """Normalised-gradient-field dissimilarity of two images (B, 1, H, W): the mean over pixels of
    1 - <grad a, grad b>^2 / ((|grad a|^2 + alpha^2) (|grad b|^2 + alpha^2)).

    Gradients are central differences (one-sided at the borders, `torch.gradient`). Near 0 where the edges of
    `a` and `b` are parallel and much stronger than `alpha` (exactly 0 for identical images with alpha = 0 and
    no flat pixel), near 1 where they cross or where either image is flat: the term aligns edge directions
    whatever the contrast (MR -> CT, thesis 003 eq. 1.4; alpha 0.08 on images in [-1, 1]).
    """

    def __init__(self, alpha: float = 0.08) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ay, ax = torch.gradient(a.float(), dim=(-2, -1))
        by, bx = torch.gradient(b.float(), dim=(-2, -1))
        eps2 = self.alpha ** 2
        dot = ax * bx + ay * by
        return (1.0 - dot ** 2 / ((ax ** 2 + ay ** 2 + eps2) * (bx ** 2 + by ** 2 + eps2))).mean()
