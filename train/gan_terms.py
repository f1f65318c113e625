"""The training terms that document 000's generator families share (section 2.4.1, "Training objective").

Least-squares GAN losses (Mao et al.) on one or several patch logit maps, feature matching on the
discriminator's intermediate activations (pix2pixHD), the R1 gradient penalty on real inputs applied lazily
(every `r1_every` discriminator steps, scaled by that interval as in StyleGAN2), the edge term (L1 between
first-order finite differences along every spatial axis, 2D or 3D), and the exponential moving average (EMA,
"Polyak") copy of the generator that evaluation and the final checkpoint use. The warm-up + cosine learning rate
is `train.schedule.warmup_cosine`.

Their weights are the `loss` section of `train.families.translation.TranslationConfig`; every function works
on (B, C, H, W) and (B, C, D, H, W) alike.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Logits = torch.Tensor | Sequence[torch.Tensor]
"""One patch logit map, or one per scale of a multi-scale discriminator."""


def _scales(logits: Logits) -> list[torch.Tensor]:
    return [logits] if isinstance(logits, torch.Tensor) else list(logits)


def lsgan(logits: Logits, real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean (D - 1)^2 for `real`, mean D^2 otherwise; averaged over the scales of a
    multi-scale discriminator (a list of logit maps)."""
    scales = _scales(logits)
    label = 1.0 if real else 0.0
    return sum(((s.float() - label) ** 2).mean() for s in scales) / len(scales)


def lsgan_generator(fake_logits: Logits) -> torch.Tensor:
    """The generator's LSGAN loss: E(D(fake) - 1)^2."""
    return lsgan(fake_logits, True)


def lsgan_discriminator(real_logits: Logits, fake_logits: Logits) -> torch.Tensor:
    """The discriminator's LSGAN loss: 0.5 (E(D(real) - 1)^2 + E D(fake)^2)."""
    return 0.5 * (lsgan(real_logits, True) + lsgan(fake_logits, False))


def _flat(features: Sequence) -> list[torch.Tensor]:
    return [t for f in features for t in ([f] if isinstance(f, torch.Tensor) else _flat(f))]


def feature_matching(real_features: Sequence, fake_features: Sequence) -> torch.Tensor:
    """Mean over layers of the L1 distance between the discriminator's activations on the real and on the
    generated input (the real ones detached: the term trains the generator only). Either a list of tensors or
    one list per scale of a multi-scale discriminator (as MONAI's `MultiScalePatchDiscriminator` returns)."""
    real, fake = _flat(real_features), _flat(fake_features)
    if len(real) != len(fake) or not real:
        raise ValueError(f"feature lists differ or are empty ({len(real)} vs {len(fake)} layers)")
    return sum(F.l1_loss(f.float(), r.detach().float()) for r, f in zip(real, fake)) / len(real)


def r1_penalty(discriminator: Callable[[torch.Tensor], Logits], real: torch.Tensor) -> torch.Tensor:
    """E_x ||grad_x sum D(x)||^2 over the batch of `real` inputs, `discriminator` returning the logits (one map
    or one per scale); differentiable in the discriminator's weights, so it can join its loss."""
    x = real.detach().requires_grad_(True)
    total = sum(s.float().sum() for s in _scales(discriminator(x)))
    (grad,) = torch.autograd.grad(total, x, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


class LazyR1:
    """The R1 penalty every `every` discriminator steps, weighted gamma / 2 * every so that its average
    strength equals gamma / 2 R1 applied at every step."""

    def __init__(self, gamma: float, every: int) -> None:
        self.gamma, self.every = gamma, every

    def due(self, step: int) -> bool:
        return self.gamma > 0 and step % self.every == 0

    def __call__(self, discriminator: Callable[[torch.Tensor], Logits], real: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.gamma * self.every * r1_penalty(discriminator, real)


def finite_differences(x: torch.Tensor) -> list[torch.Tensor]:
    """First-order forward differences of (B, C, *spatial) along each spatial axis."""
    return [torch.diff(x, dim=axis) for axis in range(2, x.ndim)]


def edge_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the spatial axes of the L1 distance between the finite differences of `pred` and `target`."""
    pairs = list(zip(finite_differences(pred.float()), finite_differences(target.float())))
    return sum(F.l1_loss(p, t) for p, t in pairs) / len(pairs)


class EMAGenerator:
    """A frozen copy (`module`) of a generator holding the exponential moving average of its weights:
    `update(model)` sets ema <- decay * ema + (1 - decay) * model for every parameter and copies the buffers
    (normalisation statistics, flags) as they are. decay 0 keeps a copy of the latest weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        torch._foreach_lerp_(list(self.module.parameters()), [p.detach() for p in model.parameters()],
                             1.0 - self.decay)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)
