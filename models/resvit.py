"""ResViT (Dalmaz et al. 2022; document 000, section 2.4.2): a residual CNN encoder-decoder whose bottleneck
holds aggregated residual transformer (ART) blocks, 2D (slices, 2.5D) or 3D (patches) by `spatial_dims`.

Encoder and decoder are the ResNet generator's (`models.cyclegan.ResnetBackbone`: reflection-padded 7-wide conv,
two stride-2 convs with instance norm and ReLU, `n_blocks` residual blocks, two transposed convs, 7-wide conv,
tanh). The blocks at `transformer_blocks` (0-based) become ART blocks: beside their residual CNN path, a
transformer branch (a `token_patch`-strided convolution to `hidden`-wide tokens, a learnt position embedding,
`transformer_depth` MONAI `TransformerBlock`s of global multi-head self-attention, a transposed convolution
back) whose output is concatenated with the CNN path's and aggregated by conv + instance norm + ReLU.

Two-phase training switches the branches: `set_transformer(False)` runs the CNN paths only (phase 1),
`set_transformer(True)` adds the branches (phase 2). The switch is a buffer, so a checkpoint records it. In
3D the document replaces global attention by windowed attention; here the 3D branch keeps global attention over
the tokens of a patch (4 ** 3 = 64 tokens for a 64-wide patch), the position embedding resized to the token
grid when a patch is not cubic.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, TransformerBlock
from monai.networks.layers import Conv
from torch import nn

from models.cyclegan import GeneratorSizes, PatchGAN, ResnetBackbone


@dataclass(frozen=True)
class ResViTConfig(GeneratorSizes):
    """Sizes of ResViT (`GeneratorSizes` plus its own). base, n_blocks, n_down: the ResNet backbone (bottleneck width
    base * 2 ** n_down); transformer_blocks: the ART blocks' positions; token_patch, hidden, num_heads, mlp_ratio,
    transformer_depth: their transformer branch. A side must be a multiple of 2 ** n_down * token_patch."""

    base: int = 64
    n_blocks: int = 9
    n_down: int = 2
    transformer_blocks: tuple[int, ...] = (4, 5)
    token_patch: int = 4
    hidden: int = 768
    num_heads: int = 8
    mlp_ratio: float = 4.0
    transformer_depth: int = 1
    tanh: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "transformer_blocks", tuple(self.transformer_blocks))
        outside = [i for i in self.transformer_blocks if not 0 <= i < self.n_blocks]
        if outside or len(set(self.transformer_blocks)) != len(self.transformer_blocks):
            raise ValueError(f"transformer_blocks {list(self.transformer_blocks)} must be distinct positions in "
                             f"0..{self.n_blocks - 1}")
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden {self.hidden} must be divisible by {self.num_heads} heads")
        self.check_sizes()

    @property
    def side_multiple(self) -> int:
        return 2 ** self.n_down * self.token_patch

    @property
    def token_grid(self) -> int:
        """Tokens per side of an `image_size` input."""
        return self.image_size // self.side_multiple


class TransformerBranch(nn.Module):
    """(B, C, *spatial) -> (B, C, *spatial) through `hidden`-wide tokens of `patch`-wide cells."""

    def __init__(self, spatial_dims: int, channels: int, grid: int, patch: int, hidden: int, num_heads: int,
                 mlp_ratio: float, depth: int) -> None:
        super().__init__()
        self.embed = Conv[Conv.CONV, spatial_dims](channels, hidden, kernel_size=patch, stride=patch)
        self.position = nn.Parameter(torch.zeros(1, hidden, *(grid,) * spatial_dims))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(hidden, int(hidden * mlp_ratio), num_heads, qkv_bias=True)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)
        self.out = Conv[Conv.CONVTRANS, spatial_dims](hidden, channels, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        position = self.position
        if position.shape[2:] != t.shape[2:]:
            mode = "bilinear" if t.ndim == 4 else "trilinear"
            position = F.interpolate(position, size=t.shape[2:], mode=mode, align_corners=False)
        grid = t.shape[2:]
        tokens = (t + position).flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens)
        t = self.norm(tokens).transpose(1, 2).reshape(t.shape[0], -1, *grid)
        return self.out(t)


class ARTBlock(nn.Module):
    """A residual CNN block with a parallel transformer branch, the two aggregated by conv + IN + ReLU; the
    branch runs only while `enabled` (a buffer) is true."""

    def __init__(self, cnn: nn.Module, branch: TransformerBranch, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.cnn, self.branch = cnn, branch
        self.aggregate = Convolution(spatial_dims, 2 * channels, channels, kernel_size=3, norm="INSTANCE",
                                     act="RELU")
        self.register_buffer("enabled", torch.tensor(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.cnn(x)
        if not bool(self.enabled):
            return h
        return self.aggregate(torch.cat((h, self.branch(x)), dim=1))


class ResViTGenerator(nn.Module):
    """forward(x, available, target, view) -> (B, 1, *spatial); the network inference runs."""

    def __init__(self, config: ResViTConfig = ResViTConfig()) -> None:
        super().__init__()
        self.config = config
        dims = config.spatial_dims
        self.net = ResnetBackbone(dims, config.in_channels, 1, config.base, config.n_blocks, config.n_down,
                                  config.tanh)
        width = config.base * 2 ** config.n_down
        for i in config.transformer_blocks:
            branch = TransformerBranch(dims, width, config.token_grid, config.token_patch, config.hidden,
                                       config.num_heads, config.mlp_ratio, config.transformer_depth)
            self.net.blocks[i] = ARTBlock(self.net.blocks[i], branch, dims, width)

    def art_blocks(self) -> list[ARTBlock]:
        return [block for block in self.net.blocks if isinstance(block, ARTBlock)]

    def set_transformer(self, on: bool) -> None:
        """Run the ART blocks' transformer branches (phase 2) or their CNN paths only (phase 1)."""
        for block in self.art_blocks():
            block.enabled.fill_(on)

    def forward(self, x: torch.Tensor, available: torch.Tensor | None = None, target: torch.Tensor | None = None,
                view: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)


class ResViTDiscriminator(PatchGAN):
    """ResViT's conditional PatchGAN on (the inputs' centre slices or patches, target)."""
