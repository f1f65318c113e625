"""The training terms that document 000's generator families share (section 2.4.1, "Training objective").

Least-squares GAN losses (Mao et al.) on one or several patch logit maps, feature matching on the
discriminator's intermediate activations (pix2pixHD), the R1 gradient penalty on real inputs applied lazily
(every `r1_every` discriminator steps, scaled by that interval as in StyleGAN2), the edge term (L1 between
first-order finite differences along every spatial axis, 2D or 3D), and the exponential moving average (EMA,
"Polyak") copy of the generator that evaluation and the final checkpoint use. The warm-up + cosine learning rate
is `train.schedule.warmup_cosine`; SSIM terms are `train.losses.MaskedSSIMLoss` (2D) and
`train.volumetric.ssim3d_map` (3D), both reached through `ssim_term` here.

`GanTermWeights` is the `loss` section of a config that uses these terms; every function works on (B, C, H, W)
and (B, C, D, H, W) alike.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train.losses import MaskedSSIMLoss
from train.volumetric import ssim3d_map


@dataclass
class GanTermWeights:
    """Weights of the generator terms (0 = off) and the regularisers' settings.

    l1, ssim (1 - SSIM over the target's foreground), edge, adversarial (LSGAN), feature_matching: the generator's
    objective (document 000 eq. 4). r1: weight gamma of the R1 penalty (gamma / 2 E||grad D(real)||^2), applied
    every `r1_every` discriminator steps (0 = off). ema_decay: decay of the EMA generator (0 = no EMA: the trained
    weights are the ones written).
    """

    l1: float = 10.0
    ssim: float = 8.0
    edge: float = 2.0
    adversarial: float = 1.0
    feature_matching: float = 10.0
    r1: float = 10.0
    r1_every: int = 16
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        if self.r1_every < 1:
            raise ValueError(f"r1_every must be at least 1, got {self.r1_every}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


def _scales(logits: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [logits] if isinstance(logits, torch.Tensor) else list(logits)


def lsgan(logits: torch.Tensor | Sequence[torch.Tensor], real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean (D - 1)^2 for `real`, mean D^2 otherwise; averaged over the scales of a
    multi-scale discriminator (a list of logit maps)."""
    scales = _scales(logits)
    label = 1.0 if real else 0.0
    return sum(((s.float() - label) ** 2).mean() for s in scales) / len(scales)


def lsgan_discriminator(real_logits: torch.Tensor | Sequence[torch.Tensor],
                        fake_logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The discriminator's LSGAN loss: 0.5 (E(D(real) - 1)^2 + E D(fake)^2)."""
    return 0.5 * (lsgan(real_logits, True) + lsgan(fake_logits, False))


def feature_matching(real_features: Sequence[torch.Tensor], fake_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of the L1 distance between the discriminator's activations on the real and on the
    generated input (the real ones detached: the term trains the generator only)."""
    if len(real_features) != len(fake_features) or not real_features:
        raise ValueError(f"feature lists differ or are empty ({len(real_features)} vs {len(fake_features)})")
    return sum(F.l1_loss(f.float(), r.detach().float()) for r, f in zip(real_features, fake_features)) \
        / len(real_features)


def r1_penalty(logits: torch.Tensor | Sequence[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
    """E_x ||grad_x sum D(x)||^2 over the batch of real `inputs` (which must require grad and produced
    `logits`); differentiable, so it can be added to the discriminator's loss."""
    total = sum(s.float().sum() for s in _scales(logits))
    (grad,) = torch.autograd.grad(total, inputs, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


class LazyR1:
    """The R1 penalty every `every` discriminator steps, weighted gamma / 2 * every so that its average
    strength equals the penalty applied at every step."""

    def __init__(self, gamma: float, every: int) -> None:
        self.gamma, self.every = gamma, every

    def due(self, step: int) -> bool:
        return self.gamma > 0 and step % self.every == 0

    def __call__(self, logits: torch.Tensor | Sequence[torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.gamma * self.every * r1_penalty(logits, inputs)


def finite_differences(x: torch.Tensor) -> list[torch.Tensor]:
    """First-order forward differences of (B, C, *spatial) along each spatial axis."""
    return [torch.diff(x, dim=axis) for axis in range(2, x.ndim)]


def edge_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the spatial axes of the L1 distance between the finite differences of `pred` and `target`."""
    pairs = list(zip(finite_differences(pred.float()), finite_differences(target.float())))
    return sum(F.l1_loss(p, t) for p, t in pairs) / len(pairs)


def ssim_term(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - SSIM averaged over the voxels of `mask` (0 when it is empty); 2D (B, 1, H, W) or 3D (B, 1, D, H, W),
    data range the target's (detached)."""
    if pred.ndim == 4:
        return MaskedSSIMLoss()(pred, target, [mask])
    weight = mask.float()
    if weight.sum() == 0:
        return pred.new_zeros(())
    data_range = float((target.max() - target.min()).detach()) or 1.0
    ssim = (ssim3d_map(pred.float(), target.float(), data_range) * weight).sum() / weight.sum()
    return 1.0 - ssim


def ema_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` to hold its exponential moving average (`ema_update`)."""
    return copy.deepcopy(model).requires_grad_(False).eval()


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for every parameter; buffers (normalisation statistics, flags)
    are copied as they are."""
    ema_params, params = list(ema.parameters()), list(model.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)
