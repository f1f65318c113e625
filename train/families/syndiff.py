"""SynDiff (document 000, section 2.4.3) in its paired single-direction form: the diffusive generator and its
time-conditional discriminator only, conditioned on the real inputs.

Per batch: a step t uniform in 0 .. steps-1, (x_t, x_{t+1}) from the forward process of the target; the
generator predicts x_0 from x_{t+1}, the inputs, t and a latent z, and x'_t is drawn from the posterior
q(x_t | x_{t+1}, x_0'). Discriminator: softplus (non-saturating) loss on (x_t, x_{t+1}) against
(x'_t, x_{t+1}), lazy R1 on x_t. Generator: the non-saturating adversarial term plus the paired term on the
predicted x_0 (the document's supervised L1; SSIM and edge weights apply as configured).
Inference runs the whole `steps`-step chain (`models.syndiff.SynDiffGenerator.forward`).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.syndiff import SynDiffConfig, SynDiffDiscriminator, SynDiffGenerator, TimeDiscriminatorConfig
from train.families.translation import (Pair, PairedLoss, Sizes, TranslationConfig, adam, apply, fit_translation,
                                        NOT_DUE, floats, network_config)
from train.gan_terms import LazyR1

FAMILY = "syndiff"


class SynDiffTrainer:
    """The diffusive generator and the time-conditional discriminator, their optimizers and one update
    (discriminator first, as DDGAN does)."""

    def __init__(self, cfg: TranslationConfig, sizes: Sizes, device: torch.device) -> None:
        model, dims = cfg.model, sizes.spatial_dims
        self.cfg = cfg
        self.generator = SynDiffGenerator(network_config(
            SynDiffConfig, model.generator, "model.generator", num_modalities=sizes.num_modalities,
            image_size=sizes.image_size, spatial_dims=dims)).to(device)
        self.discriminator = SynDiffDiscriminator(network_config(
            TimeDiscriminatorConfig, model.discriminator, "model.discriminator", spatial_dims=dims,
            image_size=sizes.image_size)).to(device)
        self.opt_g = adam([self.generator], cfg.optim)
        self.opt_d = adam([self.discriminator], cfg.optim)
        self.paired = PairedLoss(cfg.loss, dims)
        self.r1 = LazyR1(cfg.loss.r1, cfg.loss.r1_every)

    def networks(self) -> dict[str, nn.Module]:
        return {"syndiff_generator": self.generator, "syndiff_discriminator": self.discriminator}

    def step(self, pair: Pair, step: int, lr: float) -> dict[str, float]:
        w, optim, gen = self.cfg.loss, self.cfg.optim, self.generator
        b = len(pair.real)
        t = torch.randint(0, gen.config.steps, (b,), device=pair.real.device)
        x_t, x_next = gen.schedule.q_pair(pair.real, t)
        z = torch.randn(b, gen.config.latent_dim, device=pair.real.device)
        x0 = gen.denoise(x_next, pair.x, t, z)
        fake_t = gen.schedule.posterior(x0, x_next, t, torch.randn_like(x_next))

        d_terms = {"d_real": F.softplus(-self.discriminator(x_t, x_next, t)).mean(),
                   "d_fake": F.softplus(self.discriminator(fake_t.detach(), x_next, t)).mean()}
        d_total = d_terms["d_real"] + d_terms["d_fake"]
        if self.r1.due(step):
            d_terms["r1"] = self.r1(lambda y: self.discriminator(y, x_next, t), x_t)
            d_total = d_total + d_terms["r1"]
        else:
            d_terms["r1"] = NOT_DUE
        apply(self.opt_d, d_total, lr * optim.d_lr_factor, optim.grad_clip)

        total, terms = self.paired(x0, pair.real)
        if w.adversarial:
            self.discriminator.requires_grad_(False)
            terms["adversarial"] = F.softplus(-self.discriminator(fake_t, x_next, t)).mean()
            self.discriminator.requires_grad_(True)
            total = total + w.adversarial * terms["adversarial"]
        apply(self.opt_g, total, lr, optim.grad_clip)
        return floats({**terms, "g_total": total, **d_terms, "d_total": d_total})


def fit_syndiff(cfg: TranslationConfig) -> Path:
    """Train SynDiff as configured (`python -m train fit`); returns the run folder."""
    return fit_translation(cfg, FAMILY, SynDiffTrainer)
