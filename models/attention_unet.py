"""Pix2Pix as document 000 specifies it (section 2.4.1): an attention residual U-Net generator, 2D (slices, 2.5D
with context slices as channels) or 3D (patches) by `spatial_dims`, and its conditional multi-scale PatchGAN.

Encoder: one block per width in `channels`, each a stride-2 convolution + LayerNorm + LeakyReLU(0.2) followed
by a residual block (MONAI `Convolution`, `ResidualUnit`); a residual bottleneck; one decoder block per encoder
block (transposed stride-2 convolution, then the skip of that resolution gated by MONAI's `AttentionBlock` and
concatenated, then a residual block); dropout on the deepest skip; a final convolution with tanh. LayerNorm
normalises each sample over its channels and positions (a group norm with one group).

The generator takes the engines' call (x, available, target, view): x holds every modality's slices (or 3D
patches), missing ones filled with background; the other arguments are unused. `AttentionUNetDecoder` is the
decoder half SwinPix2Pix (`models.swin_pix2pix`) shares.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets.attentionunet import AttentionBlock
from torch import nn

from models.cyclegan import GeneratorSizes, PatchGAN

LAYER_NORM = ("group", {"num_groups": 1})
LEAKY_RELU = ("leakyrelu", {"negative_slope": 0.2, "inplace": False})


def encoder_block(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """Stride-2 convolution + LayerNorm + LeakyReLU(0.2), then a residual block at the new resolution."""
    style = dict(spatial_dims=spatial_dims, norm=LAYER_NORM, act=LEAKY_RELU)
    return nn.Sequential(Convolution(in_channels=in_channels, out_channels=out_channels, strides=2, kernel_size=3,
                                     **style),
                         ResidualUnit(in_channels=out_channels, out_channels=out_channels, subunits=2, **style))


class DecoderBlock(nn.Module):
    """x2 transposed convolution, the skip gated by an attention block (gate: the up-sampled features) and
    concatenated, a residual block."""

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        style = dict(spatial_dims=spatial_dims, norm=LAYER_NORM, act="RELU")
        self.up = Convolution(in_channels=in_channels, out_channels=out_channels, strides=2, kernel_size=3,
                              is_transposed=True, padding=1, output_padding=1, **style)
        self.gate = AttentionBlock(spatial_dims, f_int=max(out_channels // 2, 1), f_g=out_channels, f_l=skip_channels)
        self.merge = ResidualUnit(in_channels=out_channels + skip_channels, out_channels=out_channels, subunits=2,
                                  **style)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        g = self.up(x)
        return self.merge(torch.cat((g, self.gate(g, skip)), dim=1))


class AttentionUNetDecoder(nn.Module):
    """Residual bottleneck and attention-gated decoder over encoder features at strides 2 ** 0 .. 2 ** n.

    skip_channels: the widths of the features at strides 1, 2, ..., 2 ** (n - 1) (the input itself is the
    first); deepest: the width at stride 2 ** n. Dropout `dropout` on the deepest skip; output one channel
    through a 1-wide convolution, tanh when `tanh`.
    """

    def __init__(self, spatial_dims: int, skip_channels: Sequence[int], deepest: int, dropout: float,
                 tanh: bool) -> None:
        super().__init__()
        if len(skip_channels) < 2:
            raise ValueError(f"need the input and at least one encoder feature as skips, got {list(skip_channels)}")
        style = dict(spatial_dims=spatial_dims, norm=LAYER_NORM, act=LEAKY_RELU)
        self.bottleneck = ResidualUnit(in_channels=deepest, out_channels=deepest, subunits=2, **style)
        self.dropout = nn.Dropout(dropout)
        # Up from the deepest features to each skip's resolution in turn; each block leaves the width of that
        # resolution's encoder features (the first encoder width at full resolution).
        outs = [skip_channels[1], *skip_channels[1:]]
        ins = [*outs[1:], deepest]
        self.blocks = nn.ModuleList(DecoderBlock(spatial_dims, ins[i], skip_channels[i], outs[i])
                                    for i in reversed(range(len(skip_channels))))
        self.head = Convolution(spatial_dims, outs[0], 1, kernel_size=1, conv_only=True)
        self.tanh = tanh

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """features: [input, stride 2, ..., stride 2 ** n] (the last the deepest)."""
        *skips, h = features
        h = self.bottleneck(h)
        skips = [*skips[:-1], self.dropout(skips[-1])]
        for block, skip in zip(self.blocks, reversed(skips)):
            h = block(h, skip)
        out = self.head(h)
        return torch.tanh(out) if self.tanh else out


@dataclass(frozen=True)
class AttentionUNetConfig(GeneratorSizes):
    """Sizes of the attention residual U-Net (`GeneratorSizes` plus its own; 3D: the M modalities as channels).
    channels: the encoder blocks' widths (a side must be a multiple of 2 ** len(channels)); dropout on the
    deepest skip; tanh: squash the output into [-1, 1] (off for a z-scored target)."""

    channels: tuple[int, ...] = (64, 128, 256, 512, 512)
    dropout: float = 0.5
    tanh: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        if len(self.channels) < 2:
            raise ValueError(f"channels must list at least two encoder widths, got {list(self.channels)}")
        self.check_sizes()

    @property
    def side_multiple(self) -> int:
        """A slice or patch side must be a multiple of this."""
        return 2 ** len(self.channels)


class AttentionPix2PixGenerator(nn.Module):
    """forward(x, available, target, view) -> (B, 1, *spatial); the network inference runs."""

    def __init__(self, config: AttentionUNetConfig = AttentionUNetConfig()) -> None:
        super().__init__()
        self.config = config
        widths = [config.in_channels, *config.channels]
        self.encoder = nn.ModuleList(encoder_block(config.spatial_dims, a, b) for a, b in zip(widths, widths[1:]))
        self.decoder = AttentionUNetDecoder(config.spatial_dims, widths[:-1], widths[-1], config.dropout,
                                            config.tanh)

    def forward(self, x: torch.Tensor, available: torch.Tensor | None = None, target: torch.Tensor | None = None,
                view: torch.Tensor | None = None) -> torch.Tensor:
        features = [x]
        for block in self.encoder:
            features.append(block(features[-1]))
        return self.decoder(features)


class AttentionPix2PixDiscriminator(PatchGAN):
    """Pix2Pix's conditional two-scale PatchGAN on (the inputs' centre slices or patches, target)."""

