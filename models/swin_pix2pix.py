"""SwinPix2Pix (document 000, section 2.4.1): the Pix2Pix attention U-Net skeleton with a Swin-Transformer
backbone after the patch-embedding stem, 2D (slices, 2.5D) or 3D (patches) by `spatial_dims`.

Encoder: MONAI's Swin pieces (`PatchEmbed` with patch size 2, then one `BasicLayer` per entry of `depths`:
shifted-window self-attention with learnable relative-position bias, window `window_size`, MLP ratio
`mlp_ratio`, patch merging at its end, so stage i works at `embed_dim * 2 ** i` channels and leaves twice that
at half the resolution); each feature map layer-normalised over its channels as in MONAI's `SwinTransformer`;
then the Pix2Pix convolutional encoder blocks of `channels` (`models.attention_unet.encoder_block`). Every level
is a skip of the Pix2Pix decoder (`AttentionUNetDecoder`: residual bottleneck, attention-gated skips, dropout on
the deepest, tanh output). The document's sizes: embedding 36, depths (2, 2, 2), heads (6, 6, 12), window 4.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.blocks import PatchEmbed
from monai.networks.nets.swin_unetr import BasicLayer, PatchMerging
from torch import nn

from models.attention_unet import AttentionUNetDecoder, encoder_block
from models.cyclegan import GeneratorSizes, PatchGAN

PATCH_SIZE = 2
"""The stem's patch side: the first level is at stride 2, as the decoder's x2 steps require."""


@dataclass(frozen=True)
class SwinPix2PixConfig(GeneratorSizes):
    """Sizes of SwinPix2Pix (`GeneratorSizes` plus its own). embed_dim, depths, num_heads (one per Swin stage;
    embed_dim * 2 ** i divisible by num_heads[i]), window_size, mlp_ratio: the Swin backbone. channels: the
    convolutional encoder blocks after it. dropout on the deepest skip; tanh output. A side must be a multiple
    of 2 ** (1 + stages + blocks)."""

    embed_dim: int = 36
    depths: tuple[int, ...] = (2, 2, 2)
    num_heads: tuple[int, ...] = (6, 6, 12)
    window_size: int = 4
    mlp_ratio: float = 4.0
    channels: tuple[int, ...] = (512,)
    dropout: float = 0.5
    tanh: bool = True

    def __post_init__(self) -> None:
        for name in ("depths", "num_heads", "channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.depths or len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {list(self.depths)} and num_heads {list(self.num_heads)} must be one per stage")
        bad = [i for i, h in enumerate(self.num_heads) if (self.embed_dim * 2 ** i) % h]
        if bad:
            raise ValueError(f"stage {bad[0]}: width {self.embed_dim * 2 ** bad[0]} is not divisible by "
                             f"{self.num_heads[bad[0]]} heads")
        if not self.channels:
            raise ValueError("channels must list at least one convolutional encoder block")
        self.check_sizes()

    @property
    def swin_widths(self) -> list[int]:
        """Channels after the stem and after each Swin stage."""
        return [self.embed_dim * 2 ** i for i in range(len(self.depths) + 1)]

    @property
    def side_multiple(self) -> int:
        return 2 ** (1 + len(self.depths) + len(self.channels))


def channel_layer_norm(x: torch.Tensor) -> torch.Tensor:
    """Layer norm over the channels of (B, C, *spatial), without learnt parameters."""
    return F.layer_norm(x.movedim(1, -1), x.shape[1:2]).movedim(-1, 1)


class SwinPix2PixGenerator(nn.Module):
    """forward(x, available, target, view) -> (B, 1, *spatial); the network inference runs."""

    def __init__(self, config: SwinPix2PixConfig = SwinPix2PixConfig()) -> None:
        super().__init__()
        self.config = config
        dims, swin = config.spatial_dims, config.swin_widths
        self.embed = PatchEmbed(patch_size=PATCH_SIZE, in_chans=config.in_channels, embed_dim=config.embed_dim,
                                norm_layer=None, spatial_dims=dims)
        self.stages = nn.ModuleList(
            BasicLayer(dim=width, depth=depth, num_heads=heads, window_size=(config.window_size,) * dims,
                       drop_path=[0.0] * depth, mlp_ratio=config.mlp_ratio, qkv_bias=True, downsample=PatchMerging)
            for width, depth, heads in zip(swin, config.depths, config.num_heads))
        widths = [swin[-1], *config.channels]
        self.encoder = nn.ModuleList(encoder_block(dims, a, b) for a, b in zip(widths, widths[1:]))
        self.decoder = AttentionUNetDecoder(dims, [config.in_channels, *swin, *config.channels[:-1]],
                                            config.channels[-1], config.dropout, config.tanh)

    def forward(self, x: torch.Tensor, available: torch.Tensor | None = None, target: torch.Tensor | None = None,
                view: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(x)
        features = [x, channel_layer_norm(h)]
        for stage in self.stages:
            h = stage(h.contiguous())
            features.append(channel_layer_norm(h))
        for block in self.encoder:
            features.append(block(features[-1]))
        return self.decoder(features)


class SwinPix2PixDiscriminator(PatchGAN):
    """SwinPix2Pix's conditional two-scale PatchGAN on (the inputs' centre slices or patches, target)."""
