"""CUT networks (document 000, section 2.4.1): the ResNet generator of `models.cyclegan` (its four encoder
layers feed PatchNCE), an unconditional multi-scale PatchGAN on the target, and one two-layer MLP projection
head per encoder layer mapping sampled feature vectors to `dim`-d l2-normalised embeddings.

The document's CUT shares the Pix2Pix attention U-Net; here it keeps the original CUT paper's ResNet generator
(Park et al. 2020), whose encoder layers are the ones PatchNCE was designed on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.cyclegan import PatchGAN, ResnetGenerator


class CUTGenerator(ResnetGenerator):
    """CUT's generator (inputs -> target); the network inference runs."""


class CUTDiscriminator(PatchGAN):
    """CUT's target-domain discriminator."""


@dataclass(frozen=True)
class HeadsConfig:
    """`channels`: the width of each encoder layer PatchNCE reads; dim: the embedding size."""

    channels: tuple[int, ...] = (64, 128, 256, 256)
    dim: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))


class PatchNCEHeads(nn.Module):
    """forward(features: list of (B, N, C_l) sampled feature vectors) -> list of (B, N, dim), l2-normalised."""

    def __init__(self, config: HeadsConfig = HeadsConfig()) -> None:
        super().__init__()
        self.config = config
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(c, config.dim), nn.ReLU(), nn.Linear(config.dim, config.dim))
                                  for c in config.channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.mlps):
            raise ValueError(f"expected {len(self.mlps)} feature layers, got {len(features)}")
        return [F.normalize(mlp(f), dim=-1) for mlp, f in zip(self.mlps, features)]
