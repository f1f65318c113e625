"""SynDiff networks (document 000, section 2.4.3): few-step adversarial diffusion (DDGAN) in the paired,
single-direction form the document trains, for 2D slices or 3D patches (`spatial_dims`).

Diffusion: the variance-preserving schedule of DDGAN (beta_min 0.1, beta_max 20, `steps` reverse steps; the
document samples in 4). The time-conditional generator (MONAI `DiffusionModelUNet`) takes x_{t+1} with the
conditioning (every modality's slices, missing ones filled with background) as channels, the step and a latent
z, and predicts x_0; the next sample is drawn from the analytic posterior q(x_t | x_{t+1}, x_0). The latent z
(`latent_dim`) enters through cross-attention to one token (MONAI's conditioning), which reaches at least the
bottleneck, rather than NCSN++'s adaptive group norm. The discriminator (MONAI `DiffusionModelEncoder`, time
embedding, five down-sampling stages) scores (x_t, x_{t+1}) pairs with the step.

`forward(x, available, target, view)` is the engines' call: the whole `steps`-step reverse chain from Gaussian
noise, drawn from a generator seeded with `sample_seed` on every call, so one input gives one output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import DiffusionModelEncoder
from torch import nn

from models.cyclegan import SPATIAL_DIMS, GeneratorSizes


@dataclass(frozen=True)
class SynDiffConfig(GeneratorSizes):
    """Sizes of the diffusive generator (`GeneratorSizes` plus its own; 3D: the M modalities, no context).
    channels, num_res_blocks, attention_levels: `DiffusionModelUNet`'s (a side must be a multiple of
    2 ** (len(channels) - 1)). steps: reverse steps; beta_min / beta_max: the VP schedule; latent_dim: z;
    sample_seed: the inference noise."""

    channels: tuple[int, ...] = (32, 64, 64, 128, 128, 128)
    num_res_blocks: int = 2
    attention_levels: tuple[bool, ...] = (False, False, False, False, True, False)
    norm_groups: int = 32
    num_head_channels: int = 32
    latent_dim: int = 100
    steps: int = 4
    beta_min: float = 0.1
    beta_max: float = 20.0
    sample_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "attention_levels", tuple(self.attention_levels))
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("attention_levels needs one entry per channels entry")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        self.check_sizes()

    @property
    def side_multiple(self) -> int:
        """A slice or patch side must be a multiple of this."""
        return 2 ** (len(self.channels) - 1)

    @property
    def in_channels(self) -> int:
        """x_{t+1} plus every modality's slices."""
        return 1 + super().in_channels


class VPSchedule(nn.Module):
    """DDGAN's discretised variance-preserving SDE with `steps` steps (buffers, not saved)."""

    def __init__(self, steps: int, beta_min: float, beta_max: float, eps: float = 1e-3) -> None:
        super().__init__()
        t = torch.linspace(0, 1, steps + 1, dtype=torch.float64) * (1 - eps) + eps
        alpha_bars = torch.exp(-0.5 * t ** 2 * (beta_max - beta_min) - t * beta_min)
        betas = torch.cat([torch.tensor([1e-8], dtype=torch.float64), 1 - alpha_bars[1:] / alpha_bars[:-1]])
        a = (1 - betas).sqrt()
        a_cum = a.cumprod(0)
        # q(x_t | x_0) and q(x_{t+1} | x_t), t = 0 .. steps
        self._buffer("a_cum", a_cum)
        self._buffer("sigma_cum", (1 - a_cum ** 2).sqrt())
        self._buffer("a", a)
        self._buffer("sigma", betas.sqrt())
        # posterior q(x_t | x_{t+1}, x_0), t = 0 .. steps - 1
        post_betas = betas[1:]
        alphas_cum = (1 - post_betas).cumprod(0)
        alphas_cum_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cum[:-1]])
        variance = post_betas * (1 - alphas_cum_prev) / (1 - alphas_cum)
        self._buffer("coef_x0", post_betas * alphas_cum_prev.sqrt() / (1 - alphas_cum))
        self._buffer("coef_xt", (1 - alphas_cum_prev) * (1 - post_betas).sqrt() / (1 - alphas_cum))
        self._buffer("log_var", variance.clamp(min=1e-20).log())
        self.steps = steps

    def _buffer(self, name: str, value: torch.Tensor) -> None:
        self.register_buffer(name, value.float(), persistent=False)

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values[t].view(-1, *([1] * (like.dim() - 1)))

    def q_pair(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, x_{t+1}) drawn from the forward process given x_0."""
        x_t = self._at(self.a_cum, t, x0) * x0 + self._at(self.sigma_cum, t, x0) * torch.randn_like(x0)
        x_next = self._at(self.a, t + 1, x0) * x_t + self._at(self.sigma, t + 1, x0) * torch.randn_like(x0)
        return x_t, x_next

    def posterior(self, x0: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t drawn from q(x_t | x_{t+1}, x_0) with `noise` (none at t = 0)."""
        mean = self._at(self.coef_x0, t, x0) * x0 + self._at(self.coef_xt, t, x0) * x_next
        nonzero = (t > 0).to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return mean + nonzero * (0.5 * self._at(self.log_var, t, x0)).exp() * noise


class SynDiffGenerator(nn.Module):
    """The diffusive generator: `denoise(x_next, condition, t, z)` -> predicted x_0 (training); forward -> the
    sampled target (inference, the engines' call)."""

    def __init__(self, config: SynDiffConfig = SynDiffConfig()) -> None:
        super().__init__()
        self.config = config
        self.unet = DiffusionModelUNet(spatial_dims=config.spatial_dims, in_channels=config.in_channels,
                                       out_channels=1, num_res_blocks=config.num_res_blocks, channels=config.channels,
                                       attention_levels=config.attention_levels, norm_num_groups=config.norm_groups,
                                       num_head_channels=config.num_head_channels, with_conditioning=True,
                                       cross_attention_dim=config.latent_dim)
        self.schedule = VPSchedule(config.steps, config.beta_min, config.beta_max)

    def denoise(self, x_next: torch.Tensor, condition: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x_0 predicted from x_{t+1} (B, 1, ...), the conditioning (B, C, ...), step t (B,) and z (B, latent)."""
        return self.unet(torch.cat((x_next, condition), dim=1), t, context=z[:, None])

    def forward(self, x: torch.Tensor, available: torch.Tensor | None = None, target: torch.Tensor | None = None,
                view: torch.Tensor | None = None) -> torch.Tensor:
        """The `steps`-step reverse chain from noise, conditioned on x; (B, 1, *spatial)."""
        noise = torch.Generator(device=x.device).manual_seed(self.config.sample_seed)
        b, spatial = len(x), x.shape[2:]

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=noise, device=x.device, dtype=x.dtype)

        sample = randn(b, 1, *spatial)
        for step in reversed(range(self.config.steps)):
            t = torch.full((b,), step, device=x.device, dtype=torch.long)
            x0 = self.denoise(sample, x, t, randn(b, self.config.latent_dim))
            sample = self.schedule.posterior(x0, sample, t, randn(b, 1, *spatial))
        return sample


@dataclass(frozen=True)
class TimeDiscriminatorConfig:
    """The time-conditional discriminator on (x_t, x_{t+1}); image_size: the side of the training samples
    (its final linear layer depends on it); channels: one per down-sampling stage."""

    spatial_dims: int = 2
    image_size: int = 256
    channels: tuple[int, ...] = (32, 64, 128, 128, 128)
    num_res_blocks: int = 1
    norm_groups: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        if self.spatial_dims not in SPATIAL_DIMS:
            raise ValueError(f"spatial_dims must be 2 (slices) or 3 (patches), got {self.spatial_dims}")


class SynDiffDiscriminator(nn.Module):
    """forward(x_t, x_next, t) -> (B, 1) logits."""

    def __init__(self, config: TimeDiscriminatorConfig = TimeDiscriminatorConfig()) -> None:
        super().__init__()
        self.config = config
        levels = len(config.channels)
        self.net = DiffusionModelEncoder(spatial_dims=config.spatial_dims, in_channels=2, out_channels=1,
                                         input_shape=(config.image_size,) * config.spatial_dims,
                                         num_res_blocks=config.num_res_blocks, channels=config.channels,
                                         attention_levels=(False,) * levels, norm_num_groups=config.norm_groups,
                                         num_head_channels=config.channels[-1])

    def forward(self, x_t: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat((x_t, x_next), dim=1), t)
