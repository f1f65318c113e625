"""Pix2Pix networks: a 2D U-Net generator with tanh output and a multi-scale PatchGAN on (input, output) pairs.

Both are MONAI networks (`monai.networks.nets.UNet` with residual units, `MultiScalePatchDiscriminator`) wrapped
in our config-dataclass and call conventions, so they save, load and run through the inference engine like the
HF-GAN generator: the U-Net takes the same `(x, available, target, view)` call and ignores what it has no use
for (its input channels are every modality's slices, missing ones filled with the background value).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import UNet
from monai.networks.nets import MultiScalePatchDiscriminator as MonaiMultiScale
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """U-Net sizes. `channels` per level, each level after the first downsampling by 2; the input side must
    be divisible by 2 ** (len(channels) - 1). num_views is 0: the U-Net has no view embedding."""

    num_modalities: int = 2
    channels: tuple[int, ...] = (32, 64, 128, 256, 256)
    num_res_units: int = 2
    dropout: float = 0.0
    image_size: int = 256
    context_slices: int = 0
    num_views: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        if self.num_views:
            raise ValueError("the U-Net has no view embedding (num_views must be 0)")
        if self.image_size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^{len(self.channels) - 1}")

    @property
    def in_channels(self) -> int:
        return self.num_modalities * (2 * self.context_slices + 1)


class Pix2PixUNet(nn.Module):
    """MONAI residual U-Net, one output channel squashed by tanh into the normalised range [-1, 1]."""

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.config = config
        self.unet = UNet(spatial_dims=2, in_channels=config.in_channels, out_channels=1, channels=config.channels,
                         strides=(2,) * (len(config.channels) - 1), num_res_units=config.num_res_units,
                         dropout=config.dropout)

    def forward(self, x: torch.Tensor, available: torch.Tensor | None = None, target: torch.Tensor | None = None,
                view: torch.Tensor | None = None) -> torch.Tensor:
        """(B, M*(2k+1), H, W) -> (B, 1, H, W); `available`, `target` and `view` are accepted and unused."""
        return torch.tanh(self.unet(x))


@dataclass(frozen=True)
class MultiScaleConfig:
    """`num_scales` PatchGANs, each on the input downsampled once more; `in_channels` = condition + output."""

    in_channels: int = 2
    base: int = 32
    n_layers: int = 3
    num_scales: int = 2
    image_size: int = 256


class MultiScaleDiscriminator(nn.Module):
    """MONAI's multi-scale PatchGAN (instance norm); returns the list of per-scale patch logit maps."""

    def __init__(self, config: MultiScaleConfig = MultiScaleConfig()) -> None:
        super().__init__()
        self.config = config
        self.net = MonaiMultiScale(num_d=config.num_scales, num_layers_d=config.n_layers, spatial_dims=2,
                                   channels=config.base, in_channels=config.in_channels, out_channels=1,
                                   norm="INSTANCE", minimum_size_im=config.image_size)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        logits, _ = self.net(x)
        return logits
