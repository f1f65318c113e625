"""Mask-guided latent diffusion (document 001): the networks of the two-step framework and its one-step rival.

Every network is a MONAI generative component behind a small wrapper that carries its architecture dataclass
(so `models.checkpoint` can rebuild it):
- `KLAutoencoder`: MONAI `AutoencoderKL`, one per domain: the tumour mask (1 channel), the image (1 channel) or,
  for the one-step model, the image and its mask concatenated (2 channels). Its inputs are in [-1, 1] (a mask
  is 2 m - 1).
- `AutoencoderDiscriminator`: MONAI `PatchDiscriminator`, the PatchGAN of the autoencoder's adversarial term.
- `LatentDenoiser`: MONAI `DiffusionModelUNet` predicting the noise of a latent. Unconditional (the mask
  generator, the one-step model) or conditioned on a tumour mask (the image generator): the mask goes through
  `MaskEmbedding` (seven 2D convolutions with SiLU between them, strided down to the latent's resolution) and
  the embedding is concatenated with the noisy latent (section 3.1). The null condition of classifier-free
  guidance is the null mask, all zeros (eq. 3). It also holds its noise schedule (linear beta 0.001..0.02,
  T = 1000) and the latent scale factor (a buffer set from the training latents), so a checkpoint samples on
  its own.
- `guided_noise` (eq. 3): eps = (1 + omega) eps(z, t, c) - omega eps(z, t, null). MONAI's samplers take
  `cfg` = 1 + omega for the same combination (`monai_cfg`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet, PatchDiscriminator
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

NULL_MASK: float = 0.0
"""The value of every pixel of the null condition (an empty mask; masks are {0, 1})."""
SIZE_KEY: str = "size"
"""The provenance entry of an LDM checkpoint that holds the side of the slices it was trained on."""


def _ints(values: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class AutoencoderConfig:
    """in_channels: 1 (mask or image) or 2 (image + mask, the one-step model). channels: widths per level, each
    level after the first halves the resolution (downsampling = 2^(levels - 1)). latent_channels: channels of
    the latent. res_blocks: residual blocks per level. attention: self-attention in the lowest level and the
    middle blocks. norm_groups: GroupNorm groups (must divide every width)."""

    in_channels: int = 1
    channels: tuple[int, ...] = (64, 128, 128)
    latent_channels: int = 3
    res_blocks: int = 2
    attention: bool = False
    norm_groups: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", _ints(self.channels))
        if not self.channels or any(c % self.norm_groups for c in self.channels):
            raise ValueError(f"channels {list(self.channels)} must be non-empty multiples of norm_groups "
                             f"{self.norm_groups}")

    @property
    def downsampling(self) -> int:
        """Image side / latent side."""
        return 2 ** (len(self.channels) - 1)


class KLAutoencoder(nn.Module):
    """(B, C, H, W) in [-1, 1] <-> (B, latent_channels, H / d, W / d) latents (d = `config.downsampling`)."""

    def __init__(self, config: AutoencoderConfig = AutoencoderConfig()) -> None:
        super().__init__()
        self.config = config
        levels = len(config.channels)
        self.net = AutoencoderKL(spatial_dims=2, in_channels=config.in_channels, out_channels=config.in_channels,
                                 channels=config.channels, latent_channels=config.latent_channels,
                                 num_res_blocks=(config.res_blocks,) * levels,
                                 attention_levels=(False,) * (levels - 1) + (config.attention,),
                                 norm_num_groups=config.norm_groups, with_encoder_nonlocal_attn=config.attention,
                                 with_decoder_nonlocal_attn=config.attention)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, posterior mean and standard deviation."""
        return self.net(x)

    def encode_stage_2_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A latent sampled from the posterior (what the diffusion models train on)."""
        return self.net.encode_stage_2_inputs(x)

    def decode_stage_2_outputs(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.decode_stage_2_outputs(z)


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over a sample's latent, averaged over the batch."""
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2).clamp_min(1e-12)) - 1)
    return kl.flatten(1).sum(1).mean()


@dataclass(frozen=True)
class AutoencoderDiscriminatorConfig:
    """MONAI PatchDiscriminator: in_channels as the autoencoder's, base width `channels`, `layers` strided
    convolutions."""

    in_channels: int = 1
    channels: int = 64
    layers: int = 3


class AutoencoderDiscriminator(nn.Module):
    """(B, C, H, W) -> patch logits (B, 1, h, w) (the last of MONAI's feature maps)."""

    def __init__(self, config: AutoencoderDiscriminatorConfig = AutoencoderDiscriminatorConfig()) -> None:
        super().__init__()
        self.config = config
        self.net = PatchDiscriminator(spatial_dims=2, channels=config.channels, in_channels=config.in_channels,
                                      num_layers_d=config.layers, norm="INSTANCE")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


@dataclass(frozen=True)
class DenoiserConfig:
    """latent_channels: channels of the latent denoised (the autoencoder's). channels, attention, res_blocks,
    head_channels, norm_groups: the MONAI DiffusionModelUNet (widths per level, self-attention per level).
    condition_channels: channels of the mask embedding concatenated with the noisy latent (0: unconditional).
    mask_downsampling: mask side / latent side (the image autoencoder's downsampling); embedding_layers /
    embedding_channels: depth (7 in the paper) and hidden width of the mask embedding. timesteps, beta_start,
    beta_end, schedule: the noise schedule (MONAI scheduler arguments)."""

    latent_channels: int = 3
    channels: tuple[int, ...] = (128, 256, 256)
    attention: tuple[bool, ...] = (False, True, True)
    res_blocks: int = 2
    head_channels: int = 32
    norm_groups: int = 32
    condition_channels: int = 0
    mask_downsampling: int = 4
    embedding_layers: int = 7
    embedding_channels: int = 32
    timesteps: int = 1000
    beta_start: float = 0.001
    beta_end: float = 0.02
    schedule: str = "linear_beta"

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", _ints(self.channels))
        object.__setattr__(self, "attention", tuple(bool(a) for a in self.attention))
        if len(self.attention) != len(self.channels):
            raise ValueError(f"attention needs one entry per level ({len(self.channels)}), got {len(self.attention)}")
        if self.condition_channels:
            strides = self.mask_downsampling.bit_length() - 1
            if self.mask_downsampling < 1 or 2 ** strides != self.mask_downsampling:
                raise ValueError(f"mask_downsampling must be a power of two, got {self.mask_downsampling}")
            if self.embedding_layers < strides + 1:
                raise ValueError(f"embedding_layers must be at least {strides + 1} for a mask downsampling of "
                                 f"{self.mask_downsampling}, got {self.embedding_layers}")

    @property
    def conditional(self) -> bool:
        return self.condition_channels > 0


class MaskEmbedding(nn.Module):
    """c(mask): `embedding_layers` 3x3 convolutions with SiLU between them; the first log2(mask_downsampling)
    after the first have stride 2, so (B, 1, H, W) -> (B, condition_channels, H / d, W / d)."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        strides = config.mask_downsampling.bit_length() - 1
        layers: list[nn.Module] = []
        width = config.embedding_channels
        for i in range(config.embedding_layers):
            last = i == config.embedding_layers - 1
            layers.append(nn.Conv2d(1 if i == 0 else width, config.condition_channels if last else width, 3,
                                    stride=2 if 1 <= i <= strides else 1, padding=1))
            if not last:
                layers.append(nn.SiLU())
        self.net = nn.Sequential(*layers)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.net(mask)


class LatentDenoiser(nn.Module):
    """eps_theta(z_t, t[, c(mask)]): (B, latent_channels, h, w) noisy latents, (B,) or (1,) timesteps and, when
    conditional, (B, 1, H, W) masks in {0, 1} (`context`, as MONAI's inferers pass it) -> predicted noise."""

    def __init__(self, config: DenoiserConfig = DenoiserConfig()) -> None:
        super().__init__()
        self.config = config
        self.embedding = MaskEmbedding(config) if config.conditional else None
        levels = len(config.channels)
        self.unet = DiffusionModelUNet(spatial_dims=2, in_channels=config.latent_channels + config.condition_channels,
                                       out_channels=config.latent_channels, channels=config.channels,
                                       attention_levels=config.attention, num_res_blocks=(config.res_blocks,) * levels,
                                       num_head_channels=config.head_channels, norm_num_groups=config.norm_groups)
        self.register_buffer("scale_factor", torch.tensor(1.0))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.embedding is not None:
            if context is None:
                raise ValueError("a mask-conditioned denoiser needs a mask (context)")
            x = torch.cat([x, self.embedding(context)], dim=1)
        elif context is not None:
            raise ValueError("an unconditional denoiser takes no mask")
        if timesteps.numel() == 1 and x.shape[0] > 1:
            timesteps = timesteps.reshape(1).expand(x.shape[0])
        return self.unet(x, timesteps=timesteps)

    def schedule_args(self) -> dict[str, object]:
        c = self.config
        return {"num_train_timesteps": c.timesteps, "schedule": c.schedule, "beta_start": c.beta_start,
                "beta_end": c.beta_end}

    def training_scheduler(self) -> DDPMScheduler:
        """The forward (noising) process of training."""
        return DDPMScheduler(clip_sample=False, **self.schedule_args())

    def sampling_scheduler(self, steps: int) -> DDIMScheduler:
        """Deterministic DDIM (eta 0) over `steps` of the T timesteps; latents are not clipped."""
        scheduler = DDIMScheduler(clip_sample=False, **self.schedule_args())
        scheduler.set_timesteps(steps)
        return scheduler


def null_condition(mask: torch.Tensor) -> torch.Tensor:
    """The null mask of classifier-free guidance, shaped like `mask`."""
    return torch.full_like(mask, NULL_MASK)


def guided_noise(eps_cond: torch.Tensor, eps_uncond: torch.Tensor, omega: float) -> torch.Tensor:
    """Eq. 3: (1 + omega) eps_cond - omega eps_uncond."""
    return (1 + omega) * eps_cond - omega * eps_uncond


def guided_prediction(model: LatentDenoiser, z: torch.Tensor, t: torch.Tensor, mask: torch.Tensor,
                      omega: float) -> torch.Tensor:
    """The guided noise prediction of a mask-conditioned denoiser (the conditional one alone when omega is 0)."""
    eps_cond = model(z, t, mask)
    if omega == 0:
        return eps_cond
    return guided_noise(eps_cond, model(z, t, null_condition(mask)), omega)


def monai_cfg(omega: float) -> float:
    """MONAI's classifier-free guidance scale for the paper's omega (MONAI: uncond + cfg (cond - uncond))."""
    return 1.0 + omega
