"""Convolutional building blocks of the HF-GAN generator (pre-activation residual U-Net pieces)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3. With `groups` > 1 it is `groups` independent blocks run as one."""

    def __init__(self, in_ch: int, out_ch: int, groups: int = 1, norm_groups: int = 8) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_groups * groups, in_ch)
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.silu(self.norm(x)))


class ResBlock(nn.Module):
    """One or two ConvBlocks plus a residual path (1x1 projection when the width changes)."""

    def __init__(self, in_ch: int, out_ch: int, second_block: bool = False, groups: int = 1, norm_groups: int = 8) -> None:
        super().__init__()
        self.block1 = ConvBlock(in_ch, out_ch, groups, norm_groups)
        self.block2 = ConvBlock(out_ch, out_ch, groups, norm_groups) if second_block else nn.Identity()
        self.res_conv = nn.Conv2d(in_ch, out_ch, 1, groups=groups) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(x)) + self.res_conv(x)


class Downsample(nn.Module):
    """Halve the size: pad right/bottom by one, then conv3x3 with stride 2."""

    def __init__(self, ch: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double the size: nearest-neighbour interpolation, then conv3x3 (no checkerboard artefacts)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EncoderStage(nn.Module):
    """A residual block (its output is the stage's skip tensor) followed by downsampling (none at the last stage)."""

    def __init__(self, in_ch: int, out_ch: int, downsample: bool, second_block: bool, groups: int, norm_groups: int) -> None:
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, second_block, groups, norm_groups)
        self.down = Downsample(out_ch, groups) if downsample else nn.Identity()


class Encoder(nn.Module):
    """Stem conv3x3 then one stage per width multiplier; `groups` > 1 runs that many encoders side by side.

    With groups=G the input has G equal channel groups and every width is multiplied by G: group g of every
    tensor is exactly what a separate encoder would compute on input group g.
    """

    def __init__(self, in_ch: int, dim: int, dim_mults: tuple[int, ...], second_block: bool = False,
                 groups: int = 1, norm_groups: int = 8) -> None:
        super().__init__()
        widths = [dim * groups * m for m in dim_mults]
        self.stem = nn.Conv2d(in_ch, dim * groups, 3, padding=1, groups=groups)
        ins = [dim * groups, *widths[:-1]]
        self.stages = nn.ModuleList(
            EncoderStage(i, o, s < len(widths) - 1, second_block, groups, norm_groups)
            for s, (i, o) in enumerate(zip(ins, widths))
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the bottleneck and the per-stage skip tensors (full resolution first)."""
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage.res(x)
            skips.append(x)
            x = stage.down(x)
        return x, skips


class Decoder(nn.Module):
    """Mirror of the encoder: per level concat skip -> residual block -> upsample; then block, norm, SiLU, 1x1."""

    def __init__(self, dim: int, dim_mults: tuple[int, ...], out_ch: int = 1, second_block: bool = False,
                 norm_groups: int = 8) -> None:
        super().__init__()
        widths = [dim * m for m in dim_mults]
        self.ups = nn.ModuleList(
            nn.ModuleDict({"res": ResBlock(2 * widths[i], widths[i - 1], second_block, 1, norm_groups),
                           "up": Upsample(widths[i - 1])})
            for i in reversed(range(1, len(widths)))
        )
        self.final_block = ResBlock(widths[0], widths[0], second_block, 1, norm_groups)
        self.final_norm = nn.GroupNorm(norm_groups, widths[0])
        self.out_conv = nn.Conv2d(widths[0], out_ch, 1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """`skips` are the encoder skips of levels 1..L-1 (the full-resolution level 0 is not used)."""
        for level, up in zip(reversed(skips), self.ups):
            x = up["up"](up["res"](torch.cat((x, level), dim=1)))
        return self.out_conv(F.silu(self.final_norm(self.final_block(x))))
