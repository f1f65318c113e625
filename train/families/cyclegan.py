"""CycleGAN (document 000, section 2.4.1) on paired data: generators in both directions, the paired term on
the forward output, LSGAN adversarial and feature-matching terms through unconditional multi-scale PatchGANs
in each domain, cycle consistency both ways, identity where the channels match (single input, 2D; the document
skips it in 2.5D and multi-task settings), lazy R1 on the discriminators.

Forward: inputs -> target (G, the network inference runs, `models.cyclegan.CycleGANGenerator`); backward:
target -> inputs (F). Forward cycle F(G(x)) against the inputs' centre slices; backward cycle G(F(y)) against
the target, F(y) entering G in the inputs' channels (repeated over a 2.5D stack's context slices).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.cyclegan import (BackwardConfig, CycleGANBackward, CycleGANBackwardDiscriminator, CycleGANDiscriminator,
                             CycleGANGenerator, PatchGANConfig, ResnetConfig)
from train.families.translation import (Pair, PairedLoss, Sizes, TranslationConfig, adam, apply, fit_translation,
                                        NOT_DUE, floats, network_config, with_inputs)
from train.gan_terms import LazyR1, feature_matching, lsgan_discriminator, lsgan_generator

FAMILY = "cyclegan"


class CycleGANTrainer:
    """The four networks, their two optimizers and one update (generators, then discriminators)."""

    def __init__(self, cfg: TranslationConfig, sizes: Sizes, device: torch.device) -> None:
        model, dims = cfg.model, sizes.spatial_dims
        self.cfg, self.sizes = cfg, sizes
        self.generator = CycleGANGenerator(network_config(
            ResnetConfig, model.generator, "model.generator", num_modalities=sizes.num_modalities,
            image_size=sizes.image_size, spatial_dims=dims)).to(device)
        self.backward = CycleGANBackward(network_config(
            BackwardConfig, model.backward, "model.backward", out_channels=len(sizes.inputs),
            spatial_dims=dims)).to(device)
        disc = dict(spatial_dims=dims, image_size=sizes.image_size)
        self.disc_target = CycleGANDiscriminator(network_config(
            PatchGANConfig, model.discriminator, "model.discriminator", in_channels=1, **disc)).to(device)
        self.disc_source = CycleGANBackwardDiscriminator(network_config(
            PatchGANConfig, model.discriminator, "model.discriminator", in_channels=len(sizes.inputs),
            **disc)).to(device)
        self.opt_g = adam([self.generator, self.backward], cfg.optim)
        self.opt_d = adam([self.disc_target, self.disc_source], cfg.optim)
        self.paired = PairedLoss(cfg.loss, dims)
        self.r1 = LazyR1(cfg.loss.r1, cfg.loss.r1_every)
        self.identity = bool(cfg.loss.identity) and len(sizes.inputs) == 1 and sizes.context_slices == 0

    def networks(self) -> dict[str, nn.Module]:
        return {"cyclegan_generator": self.generator, "cyclegan_backward": self.backward,
                "cyclegan_discriminator": self.disc_target, "cyclegan_backward_discriminator": self.disc_source}

    def step(self, pair: Pair, step: int, lr: float) -> dict[str, float]:
        w, optim, k = self.cfg.loss, self.cfg.optim, self.sizes.context_slices
        fake_y = self.generator(pair.x)
        fake_s = self.backward(pair.real)
        total, terms = self.paired(fake_y, pair.real)
        if w.adversarial or w.feature_matching:
            self.disc_target.requires_grad_(False)
            self.disc_source.requires_grad_(False)
            logits_y, feats_y = self.disc_target(fake_y)
            logits_s, _ = self.disc_source(fake_s)
            terms["adversarial"] = lsgan_generator(logits_y) + lsgan_generator(logits_s)
            if w.feature_matching:
                _, real_feats = self.disc_target(pair.real)
                terms["feature_matching"] = feature_matching(real_feats, feats_y)
            self.disc_target.requires_grad_(True)
            self.disc_source.requires_grad_(True)
        if w.cycle:
            forward_cycle = F.l1_loss(self.backward(fake_y), pair.source)
            backward_cycle = F.l1_loss(self.generator(with_inputs(pair.x, fake_s, self.sizes.inputs, k)), pair.real)
            terms["cycle"] = forward_cycle + backward_cycle
        if self.identity:
            same_y = self.generator(with_inputs(pair.x, pair.real, self.sizes.inputs, k))
            terms["identity"] = F.l1_loss(same_y, pair.real) + F.l1_loss(self.backward(pair.source), pair.source)
        total = total + sum(getattr(w, name) * terms[name] for name in
                            ("adversarial", "feature_matching", "cycle", "identity") if name in terms)
        apply(self.opt_g, total, lr, optim.grad_clip)

        d_terms = {"d_target": lsgan_discriminator(self.disc_target(pair.real)[0],
                                                   self.disc_target(fake_y.detach())[0]),
                   "d_source": lsgan_discriminator(self.disc_source(pair.source)[0],
                                                   self.disc_source(fake_s.detach())[0])}
        d_total = d_terms["d_target"] + d_terms["d_source"]
        if self.r1.due(step):
            d_terms["r1"] = (self.r1(lambda y: self.disc_target(y)[0], pair.real)
                             + self.r1(lambda s: self.disc_source(s)[0], pair.source))
            d_total = d_total + d_terms["r1"]
        else:
            d_terms["r1"] = NOT_DUE
        apply(self.opt_d, d_total, lr * optim.d_lr_factor, optim.grad_clip)
        return floats({**terms, "g_total": total, **d_terms, "d_total": d_total})


def fit_cyclegan(cfg: TranslationConfig) -> Path:
    """Train CycleGAN as configured (`python -m train fit`); returns the run folder."""
    return fit_translation(cfg, FAMILY, CycleGANTrainer)
