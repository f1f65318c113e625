"""Small nnU-Net-style 2D U-Net used, frozen, inside the focal Tversky loss.

Built on MONAI's DynUNet (the nnU-Net architecture): stages 32-64-128-256, SiLU (MONAI "swish"),
instance norm, 4 output classes (background, NETC, ED, ET). 1.92 M parameters with 4 input channels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import DynUNet
from torch import nn


@dataclass(frozen=True)
class SegmenterConfig:
    in_channels: int = 4
    num_classes: int = 4
    filters: tuple[int, ...] = (32, 64, 128, 256)

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", tuple(self.filters))


class SliceSegmenter(nn.Module):
    """(B, in_channels, H, W) -> class logits (B, num_classes, H, W); H, W divisible by 2^(stages-1)."""

    def __init__(self, config: SegmenterConfig = SegmenterConfig()) -> None:
        super().__init__()
        self.config = config
        n = len(config.filters)
        self.net = DynUNet(spatial_dims=2, in_channels=config.in_channels, out_channels=config.num_classes,
                           kernel_size=[3] * n, strides=[1] + [2] * (n - 1), upsample_kernel_size=[2] * (n - 1),
                           filters=list(config.filters), norm_name="instance", act_name="swish")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
