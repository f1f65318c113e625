"""Full-3D patch generator: a small 3D U-Net (MONAI `BasicUNet`) from the available modalities to a missing one.

Input: the M normalised modalities, every missing one overwritten with `fill_value` (so whatever a caller puts
there cannot change the output), plus M one-hot planes naming the target; output: the target, normalised
(linear). Trained on random 3D patches and run in overlapping windows (`infer.engine.patches`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from torch import nn


@dataclass(frozen=True)
class Generator3DConfig:
    """Sizes of the 3D generator. features: the six widths of `BasicUNet` (four down-sampling levels, so a
    patch side must be a multiple of 16); norm_groups: group normalisation (independent of the patch)."""

    num_modalities: int = 4
    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)
    norm_groups: int = 4
    fill_value: float = -1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if len(self.features) != 6:
            raise ValueError(f"features must list six widths, got {list(self.features)}")
        if any(f % self.norm_groups for f in self.features):
            raise ValueError(f"every width of {list(self.features)} must be divisible by {self.norm_groups} groups")

    @property
    def in_channels(self) -> int:
        """Every modality (missing ones filled) + one-hot target planes."""
        return 2 * self.num_modalities

    @property
    def patch_multiple(self) -> int:
        """A patch side must be a multiple of this (2 ** the number of down-sampling levels)."""
        return 16


class Generator3D(nn.Module):
    """forward(x (B, M, D, H, W), available (B, M) bool, target (B,)) -> (B, 1, D, H, W), normalised."""

    def __init__(self, config: Generator3DConfig = Generator3DConfig()) -> None:
        super().__init__()
        self.config = config
        self.unet = BasicUNet(spatial_dims=3, in_channels=config.in_channels, out_channels=1,
                              features=config.features, norm=("group", {"num_groups": config.norm_groups}))

    def forward(self, x: torch.Tensor, available: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = torch.where(available[:, :, None, None, None], x, torch.full_like(x, self.config.fill_value))
        onehot = F.one_hot(target, self.config.num_modalities).to(x.dtype)
        planes = onehot[:, :, None, None, None].expand(-1, -1, *x.shape[2:])
        return self.unet(torch.cat((x, planes), dim=1))
