"""One training batch of the Pix2Pix recipe (MR -> CT thesis, eq. 2.1), separate from the run driver.

The target modality's channels are filled with the background value (the generator never sees them); the
generator's output is scored with L1 against the target, the normalised-gradient-field term against the first
input modality's centre slice (edges kept where the contrast changes), the adversarial term through the
multi-scale PatchGAN on the (inputs, output) pair, and optionally an L1 pull towards the background value
outside the inputs' foreground (dilated by `background_margin` pixels). One generator step, then one
discriminator step on the real and the detached fake pairs.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train.config import LossConfig
from train.losses import AdversarialLoss, NGFLoss
from train.schedule import set_lr

PIX2PIX_TERMS = ("l1", "ngf", "adversarial", "background")
"""The generator loss terms, by their `LossConfig` weight names (a weight of 0 skips the term)."""


@dataclass
class Pix2PixModels:
    """`generator` and `discriminator`, possibly wrapped (DDP, compile); `discriminator_raw`: the bare module
    the generator's adversarial term runs through, frozen meanwhile."""

    generator: nn.Module
    discriminator: nn.Module
    discriminator_raw: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer


def adversarial_terms(loss: AdversarialLoss, logits: Sequence[torch.Tensor], real: bool) -> torch.Tensor:
    """Mean of the adversarial loss over the discriminator's scales."""
    return sum(loss(scale, real) for scale in logits) / len(logits)


class Pix2PixUpdate:
    """Runs one batch: `target` (model channel index) from the modalities in `inputs`; returns the loss terms,
    the totals and the learning rate."""

    def __init__(self, models: Pix2PixModels, weights: LossConfig, lr: Callable[[int], float], d_lr_factor: float,
                 grad_clip: float, context: int, fill: float, target: int, inputs: Sequence[int], amp: bool,
                 channels_last: bool) -> None:
        if not any(getattr(weights, name) for name in PIX2PIX_TERMS):
            raise ValueError(f"every Pix2Pix loss weight is 0 ({', '.join(PIX2PIX_TERMS)})")
        if target in inputs or not inputs:
            raise ValueError(f"target channel {target} must not be among the inputs {list(inputs)}")
        self.models, self.weights, self.lr, self.d_lr_factor = models, weights, lr, d_lr_factor
        self.grad_clip, self.context, self.fill, self.amp = grad_clip, context, fill, amp
        self.target, self.inputs, self.channels_last = target, list(inputs), channels_last
        self.adversarial = AdversarialLoss()
        self.ngf = NGFLoss(weights.ngf_alpha)

    def _autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.amp and device.type == "cuda")

    def __call__(self, batch: Mapping[str, torch.Tensor], step: int) -> dict[str, float]:
        md, w = self.models, self.weights
        x = batch["image"]
        device, per = x.device, 2 * self.context + 1
        truth = x[:, self.context::per]  # (B, M, H, W) centre slices
        real = truth[:, self.target:self.target + 1]
        condition = truth[:, self.inputs]
        x = x.clone()
        x[:, self.target * per:(self.target + 1) * per] = self.fill
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        terms: dict[str, torch.Tensor] = {}
        with self._autocast(device):
            fake = md.generator(x).float()
        if w.l1:
            terms["l1"] = F.l1_loss(fake, real)
        if w.ngf:
            terms["ngf"] = self.ngf(fake, condition[:, :1])
        if w.adversarial:
            md.discriminator_raw.requires_grad_(False)
            with self._autocast(device):
                logits = md.discriminator_raw(torch.cat([condition, fake], dim=1))
            md.discriminator_raw.requires_grad_(True)
            terms["adversarial"] = adversarial_terms(self.adversarial, logits, real=True)
        if w.background:
            inside = (condition > self.fill).any(dim=1, keepdim=True).float()
            margin = w.background_margin
            inside = F.max_pool2d(inside, 2 * margin + 1, stride=1, padding=margin) if margin else inside
            outside = 1.0 - inside
            terms["background"] = (outside * (fake - self.fill).abs()).sum() / outside.sum().clamp_min(1.0)
        total = sum(getattr(w, name) * value for name, value in terms.items())
        md.opt_g.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(md.generator.parameters(), self.grad_clip)
        lr = self.lr(step)
        set_lr(md.opt_g, lr)
        md.opt_g.step()

        with self._autocast(device):
            logits = md.discriminator(torch.cat([torch.cat([condition, real], dim=1),
                                                 torch.cat([condition, fake.detach()], dim=1)]))
        b = len(real)
        d_total = 0.5 * (adversarial_terms(self.adversarial, [s[:b].float() for s in logits], real=True)
                         + adversarial_terms(self.adversarial, [s[b:].float() for s in logits], real=False))
        md.opt_d.zero_grad(set_to_none=True)
        d_total.backward()
        set_lr(md.opt_d, lr * self.d_lr_factor)
        md.opt_d.step()
        logs = {**{name: value.detach() for name, value in terms.items()}, "g_total": total.detach(),
                "d_total": d_total.detach()}
        values = torch.stack(list(logs.values())).tolist()  # one device sync per batch
        return {**dict(zip(logs, values)), "lr": lr}
