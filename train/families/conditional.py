"""Document 000's conditional GAN families on the paired-translation driver (`train.families.translation`):
Pix2Pix with the attention residual U-Net, SwinPix2Pix and ResViT, in 2D / 2.5D slices or full-3D patches.

One update for the three (section 2.4.1): the generator maps the inputs to the target; its loss is the paired
term (L1 + SSIM + edge, `PairedLoss`) plus the LSGAN adversarial and feature-matching terms through a
conditional multi-scale PatchGAN that sees (the inputs' centre slices or patches, target); then one
discriminator step (LSGAN, plus the lazy R1 penalty every `loss.r1_every` steps). The driver keeps the EMA
generator that is written as `generator/`.

ResViT trains in two phases (section 2.4.2): its ART blocks' transformer branches are off for the first
`train.cnn_fraction` of the steps (the CNN-only phase 1) and on for the rest (phase 2); the switch is saved
with the weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.cyclegan import PatchGANConfig
from models.families import FAMILIES, Network
from train.config import ConfigError
from train.families.translation import (NOT_DUE, Pair, PairedLoss, Sizes, TranslationConfig, TranslationTrainConfig,
                                        adam, apply, fit_translation, floats, network_config)
from train.gan_terms import LazyR1, feature_matching, lsgan_discriminator, lsgan_generator


class ConditionalGanTrainer:
    """The generator and conditional discriminator of `family` (its first two networks in `models.families`),
    their optimizers and one update."""

    def __init__(self, cfg: TranslationConfig, sizes: Sizes, device: torch.device, family: str) -> None:
        networks: list[tuple[str, Network]] = list(FAMILIES[family].networks.items())[:2]
        (self.gen_kind, (gen_cls, gen_config)), (self.disc_kind, (disc_cls, _)) = networks
        dims = sizes.spatial_dims
        self.cfg, self.sizes = cfg, sizes
        self.generator = gen_cls(network_config(gen_config, cfg.model.generator, "model.generator",
                                                num_modalities=sizes.num_modalities, image_size=sizes.image_size,
                                                spatial_dims=dims)).to(device)
        self.discriminator = disc_cls(network_config(PatchGANConfig, cfg.model.discriminator, "model.discriminator",
                                                     in_channels=len(sizes.inputs) + 1, spatial_dims=dims,
                                                     image_size=sizes.image_size)).to(device)
        self.opt_g = adam([self.generator], cfg.optim)
        self.opt_d = adam([self.discriminator], cfg.optim)
        self.paired = PairedLoss(cfg.loss, dims)
        self.r1 = LazyR1(cfg.loss.r1, cfg.loss.r1_every)

    def networks(self) -> dict[str, nn.Module]:
        return {self.gen_kind: self.generator, self.disc_kind: self.discriminator}

    def _discriminate(self, source: torch.Tensor, target: torch.Tensor) -> tuple[list[torch.Tensor], list]:
        return self.discriminator(torch.cat((source, target), dim=1))

    def step(self, pair: Pair, step: int, lr: float) -> dict[str, float]:
        w, optim = self.cfg.loss, self.cfg.optim
        fake = self.generator(pair.x)
        total, terms = self.paired(fake, pair.real)
        if w.adversarial or w.feature_matching:
            self.discriminator.requires_grad_(False)
            logits, fake_features = self._discriminate(pair.source, fake)
            terms["adversarial"] = lsgan_generator(logits)
            if w.feature_matching:
                with torch.no_grad():
                    _, real_features = self._discriminate(pair.source, pair.real)
                terms["feature_matching"] = feature_matching(real_features, fake_features)
            self.discriminator.requires_grad_(True)
            total = total + sum(getattr(w, name) * terms[name] for name in ("adversarial", "feature_matching")
                                if name in terms)
        apply(self.opt_g, total, lr, optim.grad_clip)

        d_adversarial = lsgan_discriminator(self._discriminate(pair.source, pair.real)[0],
                                            self._discriminate(pair.source, fake.detach())[0])
        due = self.r1.due(step)
        r1 = self.r1(lambda y: self._discriminate(pair.source, y)[0], pair.real) if due else NOT_DUE
        d_total = d_adversarial + r1 if due else d_adversarial
        apply(self.opt_d, d_total, lr * optim.d_lr_factor, optim.grad_clip)
        return floats({**terms, "g_total": total, "d_adversarial": d_adversarial, "r1": r1, "d_total": d_total})


@dataclass
class ResViTTrainConfig(TranslationTrainConfig):
    """`TranslationTrainConfig` plus cnn_fraction: the share of `steps` trained with the transformer branches
    off (phase 1; 0 = transformer from the start)."""

    cnn_fraction: float = 0.5


@dataclass
class ResViTTrainingConfig(TranslationConfig):
    """ResViT's configuration: the paired-translation sections with `ResViTTrainConfig`."""

    train: ResViTTrainConfig = field(default_factory=ResViTTrainConfig)


class ResViTTrainer(ConditionalGanTrainer):
    """The conditional GAN update with ResViT's two phases."""

    def __init__(self, cfg: ResViTTrainingConfig, sizes: Sizes, device: torch.device) -> None:
        if not 0.0 <= cfg.train.cnn_fraction <= 1.0:
            raise ConfigError(f"train.cnn_fraction must be in [0, 1], got {cfg.train.cnn_fraction}")
        super().__init__(cfg, sizes, device, "resvit")
        self.phase2_step = math.ceil(cfg.train.cnn_fraction * cfg.train.steps)

    def step(self, pair: Pair, step: int, lr: float) -> dict[str, float]:
        self.generator.set_transformer(step >= self.phase2_step)
        return {**super().step(pair, step, lr), "phase": 1.0 if step < self.phase2_step else 2.0}


def fit_attention_pix2pix(cfg: TranslationConfig) -> Path:
    """Train Pix2Pix with the attention residual U-Net (`python -m train fit`); returns the run folder."""
    return fit_translation(cfg, "attn_pix2pix",
                           lambda c, sizes, device: ConditionalGanTrainer(c, sizes, device, "attn_pix2pix"))


def fit_swin_pix2pix(cfg: TranslationConfig) -> Path:
    """Train SwinPix2Pix (`python -m train fit`); returns the run folder."""
    return fit_translation(cfg, "swin_pix2pix",
                           lambda c, sizes, device: ConditionalGanTrainer(c, sizes, device, "swin_pix2pix"))


def fit_resvit(cfg: ResViTTrainingConfig) -> Path:
    """Train ResViT in its two phases (`python -m train fit`); returns the run folder."""
    return fit_translation(cfg, "resvit", ResViTTrainer)

