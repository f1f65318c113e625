"""3D BraTS tumour segmenter: MONAI's SegResNet (Myronenko's BraTS 2018 winner without its VAE branch) on a
coarse isotropic grid.

Four modalities in (channel order = the checkpoint's modalities), one sigmoid logit per BraTS region out
(overlapping ET, TC, WT, in `conventions.regions.REGION_NAMES` order). The network runs on volumes down-sampled to
`spacing_mm`; `infer.segment` resamples and normalises.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import SegResNet
from torch import nn


@dataclass(frozen=True)
class Segmenter3DConfig:
    """Sizes of the network and the grid it works on. init_filters 8 = 1.18 M parameters, 16 = 4.7 M."""

    in_channels: int = 4
    out_channels: int = 3
    init_filters: int = 8
    blocks_down: tuple[int, ...] = (1, 2, 2, 4)
    blocks_up: tuple[int, ...] = (1, 1, 1)
    dropout: float = 0.0
    spacing_mm: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks_down", tuple(self.blocks_down))
        object.__setattr__(self, "blocks_up", tuple(self.blocks_up))
        if len(self.blocks_up) != len(self.blocks_down) - 1:
            raise ValueError("blocks_up needs one entry fewer than blocks_down")
        if self.init_filters % 8:
            raise ValueError(f"init_filters must be a multiple of 8 (group norm), got {self.init_filters}")
        if self.spacing_mm <= 0:
            raise ValueError(f"spacing_mm must be positive, got {self.spacing_mm}")

    @property
    def size_multiple(self) -> int:
        """Every input side must be a multiple of this (the down-sampling steps)."""
        return 2 ** (len(self.blocks_down) - 1)


class Segmenter3D(nn.Module):
    """(B, in_channels, X, Y, Z) -> region logits (B, out_channels, X, Y, Z); sides divisible by
    `config.size_multiple`."""

    def __init__(self, config: Segmenter3DConfig = Segmenter3DConfig()) -> None:
        super().__init__()
        self.config = config
        self.net = SegResNet(spatial_dims=3, init_filters=config.init_filters, in_channels=config.in_channels,
                             out_channels=config.out_channels, dropout_prob=config.dropout or None,
                             blocks_down=config.blocks_down, blocks_up=config.blocks_up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
