"""CUT (document 000, section 2.4.1) on paired data: the paired term on the output, LSGAN adversarial and
feature-matching terms through an unconditional multi-scale PatchGAN on the target, and PatchNCE over the
generator's four encoder layers (`nce_locations` random locations per layer, `HeadsConfig.dim`-d MLP heads,
temperature `nce_temperature`), lazy R1 on the discriminator.

PatchNCE: the output re-enters the generator's encoder in the inputs' channels (CUT's generator maps a domain
to itself in channel count; here the output stands in for each input modality); at each sampled location its
embedding (query) must pick the input's embedding at the same location (positive, detached) among the input's
embeddings at the other sampled locations of the same image (negatives).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.cut import CUTDiscriminator, CUTGenerator, HeadsConfig, PatchNCEHeads
from models.cyclegan import PatchGANConfig, ResnetConfig
from train.families.translation import (Pair, PairedLoss, Sizes, TranslationConfig, adam, apply, fit_translation,
                                        NOT_DUE, floats, network_config, with_inputs)
from train.gan_terms import LazyR1, feature_matching, lsgan_discriminator, lsgan_generator

FAMILY = "cut"


def patch_nce(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of (B, N, D) l2-normalised embeddings: query i's positive is key i, its negatives the other keys
    of the same image (keys detached); mean cross-entropy over the B * N queries."""
    logits = torch.bmm(query, key.detach().transpose(1, 2)) / temperature  # (B, N, N), positives on the diagonal
    labels = torch.arange(query.shape[1], device=query.device).expand(query.shape[0], -1)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def sample_locations(feature: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` distinct random spatial locations (flat indices) of (B, C, *spatial), all if it has fewer."""
    n = feature[0, 0].numel()
    return torch.randperm(n, generator=generator)[:count].to(feature.device)


def gather(feature: torch.Tensor, locations: torch.Tensor) -> torch.Tensor:
    """(B, N, C) feature vectors of (B, C, *spatial) at flat `locations`."""
    return feature.flatten(2)[:, :, locations].transpose(1, 2)


class CUTTrainer:
    """Generator + projection heads (one optimizer), discriminator (another), and one update."""

    def __init__(self, cfg: TranslationConfig, sizes: Sizes, device: torch.device) -> None:
        model, dims = cfg.model, sizes.spatial_dims
        self.cfg, self.sizes = cfg, sizes
        gen_cfg = network_config(ResnetConfig, model.generator, "model.generator", num_modalities=sizes.num_modalities,
                                 image_size=sizes.image_size, spatial_dims=dims)
        self.generator = CUTGenerator(gen_cfg).to(device)
        widths = [gen_cfg.base * 2 ** i for i in range(gen_cfg.n_down + 1)]
        self.heads = PatchNCEHeads(network_config(HeadsConfig, model.heads, "model.heads",
                                                  channels=(*widths, widths[-1]))).to(device)
        self.discriminator = CUTDiscriminator(network_config(
            PatchGANConfig, model.discriminator, "model.discriminator", in_channels=1, spatial_dims=dims,
            image_size=sizes.image_size)).to(device)
        self.opt_g = adam([self.generator, self.heads], cfg.optim)
        self.opt_d = adam([self.discriminator], cfg.optim)
        self.paired = PairedLoss(cfg.loss, dims)
        self.r1 = LazyR1(cfg.loss.r1, cfg.loss.r1_every)
        self.locations = torch.Generator().manual_seed(cfg.train.seed)

    def networks(self) -> dict[str, nn.Module]:
        return {"cut_generator": self.generator, "cut_discriminator": self.discriminator, "cut_heads": self.heads}

    def nce(self, x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """PatchNCE between the encodings of the input and of the output, averaged over the layers."""
        keys = self.generator.encoder_features(x)
        queries = self.generator.encoder_features(with_inputs(x, fake.expand(-1, len(self.sizes.inputs), *fake.shape[2:]),
                                                              self.sizes.inputs, self.sizes.context_slices))
        where = [sample_locations(k, self.cfg.loss.nce_locations, self.locations) for k in keys]
        q = self.heads([gather(f, i) for f, i in zip(queries, where)])
        k = self.heads([gather(f, i) for f, i in zip(keys, where)])
        return sum(patch_nce(a, b, self.cfg.loss.nce_temperature) for a, b in zip(q, k)) / len(q)

    def step(self, pair: Pair, step: int, lr: float) -> dict[str, float]:
        w, optim = self.cfg.loss, self.cfg.optim
        fake = self.generator(pair.x)
        total, terms = self.paired(fake, pair.real)
        if w.adversarial or w.feature_matching:
            self.discriminator.requires_grad_(False)
            logits, feats = self.discriminator(fake)
            terms["adversarial"] = lsgan_generator(logits)
            if w.feature_matching:
                terms["feature_matching"] = feature_matching(self.discriminator(pair.real)[1], feats)
            self.discriminator.requires_grad_(True)
        if w.nce:
            terms["nce"] = self.nce(pair.x, fake)
        total = total + sum(getattr(w, name) * terms[name] for name in ("adversarial", "feature_matching", "nce")
                            if name in terms)
        apply(self.opt_g, total, lr, optim.grad_clip)

        d_terms = {"d_target": lsgan_discriminator(self.discriminator(pair.real)[0],
                                                   self.discriminator(fake.detach())[0])}
        d_total = d_terms["d_target"]
        if self.r1.due(step):
            d_terms["r1"] = self.r1(lambda y: self.discriminator(y)[0], pair.real)
            d_total = d_total + d_terms["r1"]
        else:
            d_terms["r1"] = NOT_DUE
        apply(self.opt_d, d_total, lr * optim.d_lr_factor, optim.grad_clip)
        return floats({**terms, "g_total": total, **d_terms, "d_total": d_total})


def fit_cut(cfg: TranslationConfig) -> Path:
    """Train CUT as configured (`python -m train fit`); returns the run folder."""
    return fit_translation(cfg, FAMILY, CUTTrainer)
