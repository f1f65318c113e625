"""HF-GAN slice generator (BraSyn 2025 "No More Slice Wars" variant), vectorised over the batch.

Early-fusion encoder on all inputs + one encoder per modality (one grouped convolution), channel-attention
fusion at the bottleneck, skip aggregation, modality infuser (transformer), decoder with a linear output.

Availability rule, identical in training and inference: the early-fusion encoder contributes (with weight one,
to the skips and to both fusion paths) only when more than one modality is available; the modality encoders
contribute their mean over the available modalities. Missing channels are overwritten with `fill_value` first,
so whatever a caller puts there cannot change the output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.blocks import Decoder, Encoder
from models.infuser import ACTIVATIONS, ModalityInfuser


FUSION_GATES = ("channel", "first_channel")
"""How modality features are weighted at the bottleneck when several modalities are available:
"channel" = one gate per channel (as the method describes); "first_channel" = every channel weighted by the
gate's first channel, which is what the published BraSyn 2025 implementation computes (converted checkpoints)."""


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes of the generator; the defaults are the published full BraSyn model (80.04 M parameters)."""

    num_modalities: int = 4
    dim: int = 64
    dim_mults: tuple[int, ...] = (1, 2, 4, 8, 10)
    n_layers: int = 4
    num_heads: int = 16
    mlp_ratio: int = 4
    mlp_activation: str = "silu"
    image_size: int = 240
    context_slices: int = 0
    num_views: int = 0
    second_block: bool = False
    norm_groups: int = 8
    dropout: float = 0.0
    fill_value: float = -1.0
    fusion_gate: str = "channel"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dim_mults", tuple(self.dim_mults))
        if self.fusion_gate not in FUSION_GATES:
            raise ValueError(f"fusion_gate must be one of {FUSION_GATES}, got {self.fusion_gate!r}")
        if self.mlp_activation not in ACTIVATIONS:
            raise ValueError(f"mlp_activation must be one of {', '.join(ACTIVATIONS)}, got {self.mlp_activation!r}")
        if self.num_modalities < 2:
            raise ValueError("the generator needs at least two modalities")
        width = self.dim * self.dim_mults[-1]
        if width < 4 or width % 2 or width % self.num_heads:
            raise ValueError(f"bottleneck width {width} must be even, at least 4 and divisible by {self.num_heads} heads")
        if self.image_size % 2 ** (len(self.dim_mults) - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^{len(self.dim_mults) - 1}")

    @property
    def slices_per_modality(self) -> int:
        """2k+1 neighbouring slices per modality (k = context_slices; 1 for plain 2D)."""
        return 2 * self.context_slices + 1

    @property
    def bottleneck_size(self) -> int:
        return self.image_size // 2 ** (len(self.dim_mults) - 1)


class ChannelGate(nn.Module):
    """Global average pool -> 1x1 -> SiLU -> 1x1 -> sigmoid; `groups` independent gates as one grouped conv."""

    def __init__(self, channels: int, groups: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels, 1, groups=groups)
        self.fc2 = nn.Conv2d(channels, channels, 1, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        return torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(pooled))))


class HFGANGenerator(nn.Module):
    """Synthesises one target modality slice from the available ones.

    forward(x, available, target, view) with x (B, M*(2k+1), H, W), modality-major channels, H = W = image_size;
    available (B, M) bool; target (B,) long; view (B,) long or None. Returns (B, 1, H, W).
    """

    def __init__(self, config: GeneratorConfig = GeneratorConfig()) -> None:
        super().__init__()
        self.config = config
        m, c = config.num_modalities, config.dim * config.dim_mults[-1]
        in_ch = m * config.slices_per_modality
        enc = dict(dim_mults=config.dim_mults, second_block=config.second_block, norm_groups=config.norm_groups)
        self.early = Encoder(in_ch, config.dim, groups=1, **enc)
        self.specific = Encoder(in_ch, config.dim, groups=m, **enc)
        self.early_gate = ChannelGate(c)
        self.specific_gate = ChannelGate(m * c, groups=m)
        self.fuse = nn.Conv2d(2 * c, c, 1)
        self.infuser = ModalityInfuser(c, config.bottleneck_size ** 2, config.n_layers, config.num_heads,
                                       config.mlp_ratio, config.mlp_activation, config.dropout, config.num_views > 0)
        self.decoder = Decoder(config.dim, config.dim_mults, 1, config.second_block, config.norm_groups)

    def _check(self, x: torch.Tensor, available: torch.Tensor) -> None:
        cfg = self.config
        expected = (cfg.num_modalities * cfg.slices_per_modality, cfg.image_size, cfg.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"generator input must be (B, {expected[0]}, {expected[1]}, {expected[2]}), got {tuple(x.shape)}")
        if available.shape != (x.shape[0], cfg.num_modalities):
            raise ValueError(f"availability mask must be (B, {cfg.num_modalities}), got {tuple(available.shape)}")

    def encode(self, x: torch.Tensor, available: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Fused bottleneck (B, C, h, w) and the aggregated skips of levels 1..L-1."""
        self._check(x, available)
        b, m = available.shape
        available = available.bool()
        channel_mask = available.repeat_interleave(self.config.slices_per_modality, dim=1)[:, :, None, None]
        x = torch.where(channel_mask, x, torch.full_like(x, self.config.fill_value))

        x_early, skips_early = self.early(x)
        x_spec, skips_spec = self.specific(x)
        weight = available.to(x_early.dtype)
        n_avail = weight.sum(dim=1, keepdim=True)
        if bool((n_avail == 0).any()):
            raise ValueError("every sample needs at least one available modality")
        use_early = (n_avail > 1).to(x_early.dtype)[:, :, None, None]  # (B, 1, 1, 1)
        mean_w = (weight / n_avail)[:, :, None, None, None]  # (B, M, 1, 1, 1)

        skips = []
        for se, ss in zip(skips_early[1:], skips_spec[1:]):
            per_mod = ss.unflatten(1, (m, -1))
            skips.append(use_early * se + (per_mod * mean_w).sum(dim=1))

        c = x_early.shape[1]
        feats = x_spec.unflatten(1, (m, c))  # (B, M, C, h, w)
        gate_spec = self.specific_gate(x_spec).view(b, m, c)
        if self.config.fusion_gate == "first_channel":
            several = n_avail[:, :, None] > 1
            gate_spec = torch.where(several, gate_spec[..., :1].expand_as(gate_spec), gate_spec)
        gate_early = self.early_gate(x_early)  # (B, C, 1, 1)
        # Path 1: gated sum of the available modality features (+ gated early features).
        path_s = (feats * (gate_spec * weight[:, :, None])[..., None, None]).sum(dim=1) + use_early * x_early * gate_early
        # Path 2: per-channel softmax over the available modalities (+ early features).
        soft = torch.softmax(gate_spec.masked_fill(~available[:, :, None], float("-inf")), dim=1)
        path_h = (feats * soft[..., None, None]).sum(dim=1) + use_early * x_early
        return self.fuse(torch.cat((path_s, path_h), dim=1)), skips

    def forward_with_features(self, x: torch.Tensor, available: torch.Tensor, target: torch.Tensor,
                              view: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Output (B, 1, H, W) and the fused bottleneck before the infuser (used by the feature loss)."""
        z, skips = self.encode(x, available)
        return self.decoder(self.infuser(z, target, view), skips), z

    def forward(self, x: torch.Tensor, available: torch.Tensor, target: torch.Tensor,
                view: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_features(x, available, target, view)[0]
