"""Multi-head attention kernel: flash-attn when installed and usable, PyTorch SDPA otherwise."""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # optional GPU speed-up
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the environment
    flash_attn_func = None


def _flash_supported(q: torch.Tensor) -> bool:
    """flash-attn needs a CUDA tensor in fp16/bf16, head dim a multiple of 8 up to 256, and an Ampere+ GPU."""
    if flash_attn_func is None or not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    head_dim = q.shape[-1]
    return head_dim % 8 == 0 and head_dim <= 256 and torch.cuda.get_device_capability(q.device)[0] >= 8


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Softmax attention on (batch, tokens, heads, head_dim) tensors; returns the same layout."""
    if _flash_supported(q):
        return flash_attn_func(q, k, v, dropout_p=dropout_p)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p)
    return out.transpose(1, 2)
