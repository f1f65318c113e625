"""Small residual 3D refiner: corrects a stacked 2D synthesis using the available modalities (patch-wise)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class RefinerConfig:
    num_modalities: int = 4
    width: int = 24
    n_blocks: int = 3
    norm_groups: int = 8

    @property
    def in_channels(self) -> int:
        """Synthesis + every modality (missing ones filled) + one-hot target planes."""
        return 1 + 2 * self.num_modalities


class ResBlock3d(nn.Module):
    def __init__(self, width: int, norm_groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, width)
        self.conv1 = nn.Conv3d(width, width, 3, padding=1)
        self.norm2 = nn.GroupNorm(norm_groups, width)
        self.conv2 = nn.Conv3d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class Refiner3D(nn.Module):
    """forward(synthesis (B,1,D,H,W), inputs (B,M,D,H,W), target (B,)) -> synthesis + correction.

    The output convolution starts at zero, so an untrained refiner returns its input unchanged.
    """

    def __init__(self, config: RefinerConfig = RefinerConfig()) -> None:
        super().__init__()
        self.config = config
        self.stem = nn.Conv3d(config.in_channels, config.width, 3, padding=1)
        self.blocks = nn.Sequential(*(ResBlock3d(config.width, config.norm_groups) for _ in range(config.n_blocks)))
        self.norm = nn.GroupNorm(config.norm_groups, config.width)
        self.out_conv = nn.Conv3d(config.width, 1, 1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, synthesis: torch.Tensor, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(target, self.config.num_modalities).to(synthesis.dtype)
        planes = onehot[:, :, None, None, None].expand(-1, -1, *synthesis.shape[2:])
        h = self.blocks(self.stem(torch.cat((synthesis, inputs, planes), dim=1)))
        return synthesis + self.out_conv(F.silu(self.norm(h)))
