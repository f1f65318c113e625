"""PatchGAN discriminator with a real/fake patch map and an M-way modality classification head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DiscriminatorConfig:
    in_channels: int = 1
    base: int = 32
    n_layers: int = 3
    num_classes: int = 4
    image_size: int = 240
    norm_groups: int = 8

    @property
    def feature_size(self) -> int:
        """Side of the last feature map: stride-2 convs halve the size, the last 4x4 stride-1 conv removes one."""
        return self.image_size // 2 ** self.n_layers - 1


class PatchDiscriminator(nn.Module):
    """4x4 convs with GroupNorm and LeakyReLU(0.2); returns (patch logits (B,1,h,w), class logits (B, M))."""

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, config.base, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = config.base
        for i in range(1, config.n_layers + 1):
            out = config.base * min(2 ** i, 8)
            layers += [nn.Conv2d(width, out, 4, 2 if i < config.n_layers else 1, 1, bias=False),
                       nn.GroupNorm(config.norm_groups, out), nn.LeakyReLU(0.2)]
            width = out
        self.features = nn.Sequential(*layers)
        self.patch_head = nn.Conv2d(width, 1, 4, 1, 1, bias=False)
        # Large receptive field: one kernel covering the whole feature map.
        self.class_head = nn.Conv2d(width, config.num_classes, config.feature_size, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.patch_head(f), self.class_head(f).flatten(1)
