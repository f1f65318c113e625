"""Modality infuser: a pre-norm transformer over bottleneck tokens, conditioned on the target (and view)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import attention

ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU}


def sinusoidal_embedding(index: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal code of integer labels: (B,) -> (B, dim), sines then cosines."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=index.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = index.float()[:, None] * freqs[None, :]
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


class LabelEmbedding(nn.Module):
    """Sinusoidal code -> Linear -> SiLU -> Linear, for the target modality or the slicing view."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        code = sinusoidal_embedding(index, self.dim).to(self.fc1.weight.dtype)
        return self.fc2(F.silu(self.fc1(code)))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).unbind(2)
        out = attention(q, k, v, self.dropout if self.training else 0.0)
        return F.dropout(self.proj(out.reshape(b, n, c)), self.dropout, self.training)


class TransformerLayer(nn.Module):
    """Pre-norm layer: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, mlp_ratio * dim))
        self.mlp.add_module("act", ACTIVATIONS[activation]())
        self.mlp.add_module("drop1", nn.Dropout(dropout))
        self.mlp.add_module("fc2", nn.Linear(mlp_ratio * dim, dim))
        self.mlp.add_module("drop2", nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ModalityInfuser(nn.Module):
    """1x1 token projection + learned positions + target (and optional view) embedding, transformer, back to a map."""

    def __init__(self, dim: int, n_tokens: int, n_layers: int, heads: int, mlp_ratio: int, activation: str,
                 dropout: float, use_view: bool) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(dim, dim, 1)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, dim))
        self.embed_dropout = nn.Dropout(dropout)
        self.target_embed = LabelEmbedding(dim)
        self.view_embed = LabelEmbedding(dim) if use_view else None
        self.layers = nn.ModuleList(TransformerLayer(dim, heads, mlp_ratio, activation, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, z: torch.Tensor, target: torch.Tensor, view: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = z.shape
        tokens = self.embed_dropout(self.patch_embed(z).flatten(2).transpose(1, 2) + self.pos_embed)
        tokens = tokens + self.target_embed(target)[:, None]
        if self.view_embed is not None:
            if view is None:
                raise ValueError("this generator was trained with a view embedding: pass the view index")
            tokens = tokens + self.view_embed(view)[:, None]
        for layer in self.layers:
            tokens = layer(tokens)
        return self.norm(tokens).transpose(1, 2).reshape(b, c, h, w)
