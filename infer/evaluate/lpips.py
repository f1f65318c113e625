"""LPIPS (Zhang et al. 2018, v0.1, AlexNet) without torchvision and without downloads.

Two weight files, both given by the user (nothing is fetched; where either is absent LPIPS is not computed):

- the AlexNet trunk in torchvision's ImageNet state-dict format, ``alexnet-owt-7be5be79.pth`` as torchvision
  caches it (keys ``features.{0,3,6,8,10}.{weight,bias}``; the classifier's keys are ignored);
- the calibrated linear layers of the `lpips` package, ``lpips/weights/v0.1/alex.pth`` in its source tree
  (keys ``lin{0..4}.model.1.weight``, shapes (1, C, 1, 1) for C = 64, 192, 384, 256, 256).

The distance of two images in [-1, 1] (B, 3, H, W): each goes through the package's scaling layer
(``(x - shift) / scale``), the AlexNet convolutions and their ReLUs at five depths (relu1 .. relu5); each feature
map is divided by its channel-wise Euclidean norm (+ 1e-10), the squared difference is weighted per channel by
the linear layer (a 1 x 1 convolution), averaged over space and summed over the five depths.

`volume_lpips` is document 000's protocol: axial slices (the last array axis) that hold at least 1 % foreground,
each volume on its own [0, 1] scale (`infer.evaluate.metrics.percentile_normalize`) mapped to [-1, 1], grey
replicated to three channels, the mean over those slices. Slices narrower than `MIN_SIDE` are padded with the
background value (AlexNet's strides need about 32 pixels; document 000's slices are 256 x 256).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from infer.evaluate.metrics import percentile_normalize

TRUNK_FILE = "alexnet-owt-7be5be79.pth"
"""torchvision's ImageNet AlexNet weights (the name it caches them under)."""
LINEAR_FILE = "alex.pth"
"""The `lpips` package's v0.1 calibration of the AlexNet layers (``lpips/weights/v0.1/alex.pth``)."""

CHANNELS: tuple[int, ...] = (64, 192, 384, 256, 256)
SHIFT: tuple[float, ...] = (-0.030, -0.088, -0.188)
SCALE: tuple[float, ...] = (0.458, 0.448, 0.450)
MIN_SIDE = 64
FOREGROUND_SLICE_FRACTION = 0.01
"""A slice counts when at least this share of its pixels is foreground (document 000, section 2.6)."""


class AlexTrunk(nn.Module):
    """torchvision's AlexNet `features` (the same layer indices, so its state dict loads), returning the five
    ReLU outputs LPIPS compares."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in (1, 4, 7, 9, 11):
                out.append(x)
        return out


class LPIPS(nn.Module):
    """The LPIPS v0.1 AlexNet distance (see the module docstring); `forward(x, y)` -> (B,) for images in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = AlexTrunk()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT)[None, :, None, None])
        self.register_buffer("scale", torch.tensor(SCALE)[None, :, None, None])
        self.requires_grad_(False).eval()

    @classmethod
    def from_files(cls, trunk: str | Path, linear: str | Path) -> LPIPS:
        """Load torchvision's AlexNet state dict (`trunk`) and the `lpips` package's linear layers (`linear`);
        ValueError naming the file when one does not hold what it should."""
        model = cls()
        features = {k: v for k, v in _state_dict(trunk).items() if k.startswith("features.")}
        _load(model.trunk, features, trunk)
        linear_state = _state_dict(linear)
        lins = {f"{i}.weight": linear_state.get(f"lin{i}.model.1.weight") for i in range(len(CHANNELS))}
        if any(v is None for v in lins.values()):
            raise ValueError(f"{linear}: not the lpips package's linear layers (keys lin0..lin4.model.1.weight)")
        _load(model.lins, lins, linear)
        return model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.trunk((x - self.shift) / self.scale), self.trunk((y - self.shift) / self.scale)
        total = torch.zeros(x.shape[0], device=x.device)
        for a, b, lin in zip(fx, fy, self.lins):
            diff = (_unit(a) - _unit(b)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + eps)


def _state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    return state


def _load(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: {' '.join(str(err).split())[:300]}") from None


def load_lpips(trunk: str | Path | None, linear: str | Path | None) -> LPIPS | None:
    """LPIPS from the two weight files, or None (LPIPS not computed) when either is not given or not there."""
    if trunk is None or linear is None or not Path(trunk).is_file() or not Path(linear).is_file():
        return None
    return LPIPS.from_files(trunk, linear)


def foreground_slices(mask: np.ndarray, fraction: float = FOREGROUND_SLICE_FRACTION) -> np.ndarray:
    """Indices of the axial slices (last axis) in which at least `fraction` of the pixels are in `mask`."""
    share = np.asarray(mask, dtype=bool).reshape(-1, mask.shape[-1]).mean(axis=0)
    return np.flatnonzero(share >= fraction)


def volume_lpips(model: LPIPS, pred: np.ndarray, reference: np.ndarray, mask: np.ndarray,
                 batch_size: int = 16) -> float:
    """Mean LPIPS over the foreground axial slices of two volumes of the same shape (NaN when there are none);
    each volume is put on its own [0, 1] scale first (see the module docstring)."""
    index = foreground_slices(mask)
    if index.size == 0:
        return math.nan
    p = torch.from_numpy(percentile_normalize(pred)[..., index]).permute(2, 0, 1)[:, None] * 2 - 1
    r = torch.from_numpy(percentile_normalize(reference)[..., index]).permute(2, 0, 1)[:, None] * 2 - 1
    pad_h, pad_w = max(MIN_SIDE - p.shape[2], 0), max(MIN_SIDE - p.shape[3], 0)
    if pad_h or pad_w:
        pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        p, r = F.pad(p, pads, value=-1.0), F.pad(r, pads, value=-1.0)
    values = []
    with torch.no_grad():
        for start in range(0, p.shape[0], batch_size):
            values.append(model(p[start:start + batch_size].expand(-1, 3, -1, -1),
                                r[start:start + batch_size].expand(-1, 3, -1, -1)))
    return float(torch.cat(values).mean())
