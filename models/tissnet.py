"""TISS-Net (document 004): joint synthesis of a missing modality and whole-tumour segmentation.

2.5D, as the paper: every network is a U-Net on (B, C, X, Y, Z) patches whose two highest resolution levels
use in-plane (3x3x1) convolutions and in-plane pooling and whose lower levels use 3D (3x3x3) ones, on axial
slabs (the paper's 16x128x128 patches are X=Y=128, Z=16). The encoder/decoder blocks are MONAI `Convolution`s
(instance norm, leaky ReLU).

- G (`TissNet.generator`): one encoder, a synthesis decoder (the target modality, normalised intensities) and
  a coarse-segmentation decoder (whole-tumour logit y_c).
- S (`TissNet.segmentor`): the same form on sources + synthesis + sigmoid(y_c), a fine-segmentation decoder
  (logit y_f) and an error-prediction decoder (logit y_e, where y_c is wrong).
- `refined_mask` (y_r = (1-y_c) y_e + y_c (1-y_e)) and `consistency` (mean (y_f - y_r)^2), eq. 7-8.
- `TissNetDiscriminators`: the conditional global PatchGAN D_g and the tumour-box PatchGAN D_t on
  sources + target (in-plane 70x70 receptive field, the patch's whole depth as the paper's 16x70x70).
- `PerceptualSegmenter`: S_p, the single-decoder U-Net trained on the real target modality alone and frozen
  in the perceptibility term.

Widths: the paper's 127 M parameters (G, S and the discriminators at 32..512 channels) are scaled to
channels (16, 32, 48, 80, 112): 5.36 M parameters for G + S, a 21.4 MB inference checkpoint (the discriminators
and S_p are training-only).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from monai.networks.blocks import Convolution
from torch import nn

ACT = ("leakyrelu", {"negative_slope": 0.01})


def _tuple(values: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class UNet25DConfig:
    """in_channels: input channels. heads: output channels of each decoder (one decoder per entry).
    channels: widths of the resolution levels, highest first. planar_levels: how many of the highest levels
    use in-plane (2D) convolutions and pooling; the others are 3D."""

    in_channels: int = 3
    heads: tuple[int, ...] = (1, 1)
    channels: tuple[int, ...] = (16, 32, 48, 80, 112)
    planar_levels: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", _tuple(self.heads))
        object.__setattr__(self, "channels", _tuple(self.channels))
        if len(self.channels) < 2 or min(self.channels) < 1 or not self.heads or min(self.heads) < 1:
            raise ValueError(f"need at least two levels of positive widths and one head, got channels "
                             f"{list(self.channels)}, heads {list(self.heads)}")
        if not 0 <= self.planar_levels <= len(self.channels):
            raise ValueError(f"planar_levels must be in 0..{len(self.channels)}, got {self.planar_levels}")

    def kernel(self, level: int) -> tuple[int, int, int]:
        return (3, 3, 1) if level < self.planar_levels else (3, 3, 3)

    def pool(self, level: int) -> tuple[int, int, int]:
        """The down-sampling factor from `level` to `level + 1` (in-plane only below a planar level)."""
        return (2, 2, 1) if level < self.planar_levels else (2, 2, 2)

    @property
    def size_multiple(self) -> tuple[int, int, int]:
        """What each patch side (X, Y, Z) must be a multiple of."""
        factors = [self.pool(level) for level in range(len(self.channels) - 1)]
        return tuple(int(torch.tensor([f[a] for f in factors]).prod()) for a in range(3))


def _block(in_channels: int, out_channels: int, kernel: tuple[int, int, int]) -> nn.Sequential:
    return nn.Sequential(Convolution(3, in_channels, out_channels, kernel_size=kernel, norm="instance", act=ACT),
                         Convolution(3, out_channels, out_channels, kernel_size=kernel, norm="instance", act=ACT))


class _Decoder(nn.Module):
    def __init__(self, config: UNet25DConfig, out_channels: int) -> None:
        super().__init__()
        ch = config.channels
        levels = range(len(ch) - 2, -1, -1)
        self.up = nn.ModuleList(Convolution(3, ch[i + 1], ch[i], strides=config.pool(i), kernel_size=config.pool(i),
                                            padding=0, output_padding=0, is_transposed=True, conv_only=True)
                                for i in levels)
        self.blocks = nn.ModuleList(_block(2 * ch[i], ch[i], config.kernel(i)) for i in levels)
        self.head = Convolution(3, ch[0], out_channels, kernel_size=1, conv_only=True)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for up, block, skip in zip(self.up, self.blocks, reversed(features[:-1])):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class UNet25D(nn.Module):
    """A 2.5D U-Net with one shared encoder and one decoder per head: (B, in, X, Y, Z) -> one (B, head, X, Y, Z)
    tensor per head; X, Y, Z multiples of `config.size_multiple`."""

    def __init__(self, config: UNet25DConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        self.encoder = nn.ModuleList(_block(config.in_channels if i == 0 else ch[i - 1], ch[i], config.kernel(i))
                                     for i in range(len(ch)))
        self.pools = nn.ModuleList(nn.MaxPool3d(config.pool(i)) for i in range(len(ch) - 1))
        self.decoders = nn.ModuleList(_Decoder(config, n) for n in config.heads)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        multiple = self.config.size_multiple
        if any(side % m for side, m in zip(x.shape[2:], multiple)):
            raise ValueError(f"patch sides {list(x.shape[2:])} must be multiples of {list(multiple)}")
        features = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pools[i - 1](x))
            features.append(x)
        return [decoder(features) for decoder in self.decoders]


@dataclass(frozen=True)
class TissNetConfig:
    """num_inputs: source modalities given (the target is missing). channels / planar_levels: of both U-Nets."""

    num_inputs: int = 3
    channels: tuple[int, ...] = (16, 32, 48, 80, 112)
    planar_levels: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", _tuple(self.channels))
        if self.num_inputs < 1:
            raise ValueError(f"num_inputs must be at least 1, got {self.num_inputs}")

    def unet(self, in_channels: int) -> UNet25DConfig:
        return UNet25DConfig(in_channels, (1, 1), self.channels, self.planar_levels)


@dataclass
class TissNetOutput:
    """Every output of one pass: synthesis (normalised target), and the logits of the coarse mask y_c, the
    fine mask y_f and the error map y_e, each (B, 1, X, Y, Z)."""

    synthesis: torch.Tensor
    coarse: torch.Tensor
    fine: torch.Tensor
    error: torch.Tensor


def refined_mask(coarse: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """y_r = (1 - y_c) y_e + y_c (1 - y_e) of probabilities: the coarse mask with its predicted errors flipped."""
    return (1 - coarse) * error + coarse * (1 - error)


def consistency(fine: torch.Tensor, refined: torch.Tensor) -> torch.Tensor:
    """||y_f - y_r||^2 averaged over voxels (eq. 8)."""
    return (fine - refined).pow(2).mean()


def error_target(coarse: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Where the binarised coarse probabilities (> 0.5) differ from the {0, 1} truth: the error decoder's
    target (eq. 9), detached."""
    return ((coarse.detach() > 0.5).float() != truth).float()


class TissNet(nn.Module):
    """G and S, trained end to end: (B, num_inputs, X, Y, Z) sources in model order -> `TissNetOutput`."""

    def __init__(self, config: TissNetConfig) -> None:
        super().__init__()
        self.config = config
        self.generator = UNet25D(config.unet(config.num_inputs))
        self.segmentor = UNet25D(config.unet(config.num_inputs + 2))

    @property
    def size_multiple(self) -> tuple[int, int, int]:
        return self.generator.config.size_multiple

    def forward(self, sources: torch.Tensor) -> TissNetOutput:
        synthesis, coarse = self.generator(sources)
        fine, error = self.segmentor(torch.cat([sources, synthesis, torch.sigmoid(coarse)], dim=1))
        return TissNetOutput(synthesis, coarse, fine, error)


@dataclass(frozen=True)
class PatchGANConfig:
    """in_channels: sources + target. base: first width (doubled per layer up to 8x). layers: strided layers
    (3: a 70x70 in-plane receptive field)."""

    in_channels: int = 4
    base: int = 16
    layers: int = 3


class PatchGAN25D(nn.Module):
    """Conditional PatchGAN on (B, in, X, Y, Z): in-plane strides, 3-deep kernels through the slab; returns the
    (B, 1, X', Y', Z) patch scores (least-squares GAN, no sigmoid)."""

    def __init__(self, config: PatchGANConfig) -> None:
        super().__init__()
        widths = [config.in_channels] + [config.base * min(2 ** i, 8) for i in range(config.layers + 1)]
        layers: list[nn.Module] = []
        for i in range(config.layers + 1):
            stride = (2, 2, 1) if i < config.layers else (1, 1, 1)
            layers.append(Convolution(3, widths[i], widths[i + 1], strides=stride, kernel_size=(4, 4, 3),
                                      padding=(1, 1, 1), norm=None if i == 0 else "instance",
                                      act=("leakyrelu", {"negative_slope": 0.2})))
        layers.append(Convolution(3, widths[-1], 1, kernel_size=(4, 4, 3), padding=(1, 1, 1), conv_only=True))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TissNetDiscriminators(nn.Module):
    """D_g (global) and D_t (tumour box), one checkpoint."""

    def __init__(self, config: PatchGANConfig) -> None:
        super().__init__()
        self.config = config
        self.global_ = PatchGAN25D(config)
        self.tumour = PatchGAN25D(config)


@dataclass(frozen=True)
class PerceptualConfig:
    """S_p: a single-decoder 2.5D U-Net on the target modality alone (one channel in, one logit out)."""

    channels: tuple[int, ...] = (16, 32, 48, 80, 112)
    planar_levels: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", _tuple(self.channels))


class PerceptualSegmenter(nn.Module):
    """S_p: (B, 1, X, Y, Z) target modality -> (B, 1, X, Y, Z) whole-tumour logit."""

    def __init__(self, config: PerceptualConfig) -> None:
        super().__init__()
        self.config = config
        self.net = UNet25D(UNet25DConfig(1, (1,), config.channels, config.planar_levels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]
