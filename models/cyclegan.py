"""CycleGAN networks (document 000, section 2.4.1): 9-block ResNet generators in both directions and
multi-scale PatchGAN discriminators, for 2D slices (2D, 2.5D) or 3D patches (full 3D) by `spatial_dims`.

The ResNet generator is Zhu et al.'s: reflection-padded 7-wide conv, two stride-2 down-samplings, `n_blocks`
residual blocks, two transposed-conv up-samplings, reflection-padded 7-wide conv, tanh (optional: a task whose
normalised target is not in [-1, 1], a z-scored MR, trains with a linear output). Its pieces are MONAI blocks
(`Convolution`, `ResidualUnit`; instance norm, ReLU). The forward generator takes what the slice engine gives
(every modality's slices, missing ones filled with background) or, in 3D, the patch engine's modalities; the
backward generator maps the target back to the input modalities (cycle term). `encoder_features` returns the
four encoder layers CUT's PatchNCE reads (initial conv, both down-samplings, the middle residual block).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import PatchDiscriminator
from torch import nn

SPATIAL_DIMS: tuple[int, ...] = (2, 3)


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in SPATIAL_DIMS:
        raise ValueError(f"spatial_dims must be 2 (slices) or 3 (patches), got {spatial_dims}")


@dataclass(frozen=True)
class GeneratorSizes:
    """What the inference engines read of a document-000 slice (spatial_dims 2) or patch (3) generator: the
    number of modalities, the side of its samples, the 2.5D context slices per side (2D only) and no view
    embedding (num_views 0). Each family's config adds its own sizes and `side_multiple`, and calls
    `check_sizes()` from its `__post_init__`."""

    num_modalities: int = 2
    image_size: int = 256
    context_slices: int = 0
    num_views: int = 0
    spatial_dims: int = 2

    @property
    def side_multiple(self) -> int:
        """A slice or patch side must be a multiple of this."""
        return 1

    @property
    def in_channels(self) -> int:
        """Every modality's 2k + 1 slices (a 3D patch: k = 0)."""
        return self.num_modalities * (2 * self.context_slices + 1)

    def check_sizes(self) -> None:
        """ValueError for sizes the generator cannot take."""
        _check_dims(self.spatial_dims)
        if self.num_views:
            raise ValueError("the generator has no view embedding (num_views must be 0)")
        if self.spatial_dims == 3 and self.context_slices:
            raise ValueError("a 3D generator takes no context slices (context_slices must be 0)")
        if self.image_size % self.side_multiple:
            raise ValueError(f"image_size {self.image_size} must be divisible by {self.side_multiple}")


class ResnetBackbone(nn.Module):
    """Zhu et al.'s ResNet generator from `in_channels` to `out_channels` (2D or 3D)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, base: int, n_blocks: int,
                 n_down: int, tanh: bool) -> None:
        super().__init__()
        _check_dims(spatial_dims)
        pad = (nn.ReflectionPad2d, nn.ReflectionPad3d)[spatial_dims - 2]
        block = dict(spatial_dims=spatial_dims, norm="INSTANCE", act="RELU")
        self.stem = nn.Sequential(pad(3), Convolution(in_channels=in_channels, out_channels=base, kernel_size=7,
                                                      padding=0, **block))
        widths = [base * 2 ** i for i in range(n_down + 1)]
        self.downs = nn.ModuleList(Convolution(in_channels=a, out_channels=b, strides=2, kernel_size=3, **block)
                                   for a, b in zip(widths, widths[1:]))
        self.blocks = nn.ModuleList(ResidualUnit(in_channels=widths[-1], out_channels=widths[-1], subunits=2, **block)
                                    for _ in range(n_blocks))
        self.ups = nn.Sequential(*(Convolution(in_channels=b, out_channels=a, strides=2, kernel_size=3,
                                               is_transposed=True, padding=1, output_padding=1, **block)
                                   for a, b in reversed(list(zip(widths, widths[1:])))))
        self.head = nn.Sequential(pad(3), Convolution(spatial_dims, base, out_channels, kernel_size=7, padding=0,
                                                      conv_only=True))
        self.tanh = tanh

    def encoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The initial conv, each down-sampling and the middle residual block (CUT's PatchNCE layers)."""
        h = self.stem(x)
        features = [h]
        for down in self.downs:
            h = down(h)
            features.append(h)
        for block in self.blocks[:len(self.blocks) // 2 + 1]:
            h = block(h)
        return [*features, h]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for module in (*self.downs, *self.blocks):
            h = module(h)
        out = self.head(self.ups(h))
        return torch.tanh(out) if self.tanh else out


@dataclass(frozen=True)
class ResnetConfig(GeneratorSizes):
    """Sizes of a slice (spatial_dims 2) or patch (3) ResNet generator (`GeneratorSizes` plus the backbone's).
    A side must be a multiple of 2 ** n_down; in 3D the input is the M modalities (no context slices)."""

    base: int = 64
    n_blocks: int = 9
    n_down: int = 2
    tanh: bool = True

    def __post_init__(self) -> None:
        self.check_sizes()

    @property
    def side_multiple(self) -> int:
        """A slice or patch side must be a multiple of this."""
        return 2 ** self.n_down


class ResnetGenerator(nn.Module):
    """forward(x, available, target, view) -> (B, 1, *spatial): the engines' call; x holds every modality's
    slices (or 3D patches), missing ones filled with background; `available`, `target` and `view` are unused."""

    def __init__(self, config: ResnetConfig = ResnetConfig()) -> None:
        super().__init__()
        self.config = config
        self.net = ResnetBackbone(config.spatial_dims, config.in_channels, 1, config.base, config.n_blocks,
                                  config.n_down, config.tanh)

    def encoder_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net.encoder_features(x)

    def forward(self, x: torch.Tensor, available: torch.Tensor | None = None, target: torch.Tensor | None = None,
                view: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)


class CycleGANGenerator(ResnetGenerator):
    """CycleGAN's forward generator (inputs -> target); the network inference runs."""


@dataclass(frozen=True)
class BackwardConfig:
    """CycleGAN's backward generator: the target's centre slice (or patch) -> `out_channels` input modalities."""

    out_channels: int = 1
    spatial_dims: int = 2
    base: int = 64
    n_blocks: int = 9
    n_down: int = 2
    tanh: bool = True

    def __post_init__(self) -> None:
        _check_dims(self.spatial_dims)


class CycleGANBackward(nn.Module):
    """forward(y (B, 1, *spatial)) -> (B, out_channels, *spatial)."""

    def __init__(self, config: BackwardConfig = BackwardConfig()) -> None:
        super().__init__()
        self.config = config
        self.net = ResnetBackbone(config.spatial_dims, 1, config.out_channels, config.base, config.n_blocks,
                                  config.n_down, config.tanh)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


@dataclass(frozen=True)
class PatchGANConfig:
    """`num_scales` PatchGANs of `n_layers` stride-2 convs from `base` channels (MONAI `PatchDiscriminator`),
    scale i on the input down-sampled i times by 2 (pix2pixHD); image_size: the smallest side they see (a
    slice, or a patch side)."""

    in_channels: int = 1
    spatial_dims: int = 2
    base: int = 64
    n_layers: int = 3
    num_scales: int = 2
    image_size: int = 256

    def __post_init__(self) -> None:
        _check_dims(self.spatial_dims)
        smallest = 4 * 2 ** (self.n_layers + self.num_scales - 1)
        if self.image_size < smallest:
            raise ValueError(f"{self.num_scales} scale(s) of {self.n_layers} layers need samples of at least "
                             f"{smallest} per side, not {self.image_size}")


class PatchGAN(nn.Module):
    """Unconditional multi-scale PatchGAN with instance norm; forward -> (logit maps per scale, intermediate
    features per scale) for the adversarial and feature-matching terms."""

    def __init__(self, config: PatchGANConfig = PatchGANConfig()) -> None:
        super().__init__()
        self.config = config
        self.scales = nn.ModuleList(PatchDiscriminator(spatial_dims=config.spatial_dims, channels=config.base,
                                                       in_channels=config.in_channels, num_layers_d=config.n_layers,
                                                       norm="INSTANCE")
                                    for _ in range(config.num_scales))
        self.pool = (nn.AvgPool2d, nn.AvgPool3d)[config.spatial_dims - 2](3, stride=2, padding=1,
                                                                           count_include_pad=False)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        logits, features = [], []
        for index, scale in enumerate(self.scales):
            if index:
                x = self.pool(x)
            out = scale(x)
            logits.append(out[-1])
            features.append(out[:-1])
        return logits, features


class CycleGANDiscriminator(PatchGAN):
    """CycleGAN's target-domain discriminator."""


class CycleGANBackwardDiscriminator(PatchGAN):
    """CycleGAN's input-domain discriminator (on the backward generator's output)."""
