"""Resumable training state: one `torch.save` file of plain tensors, dicts, lists, numbers and strings only,
so it loads with `torch.load(weights_only=True)` (no arbitrary unpickling). Written atomically."""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"

Stateful = torch.nn.Module | torch.optim.Optimizer
"""What a training state holds by name: networks and their optimizers (anything with `state_dict`)."""


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (CPU, and every CUDA device when present)."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(folder: str | Path, state: dict[str, Any]) -> Path:
    path = Path(folder) / STATE_FILE
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        torch.save(state, tmp)
    os.replace(tmp.name, path)
    return path


def load_state(folder: str | Path) -> dict[str, Any]:
    """The state on the CPU (RNG states must stay there; `load_state_dict` moves the rest)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class TrainingClock:
    """When a training run started and how many seconds it has trained, summed over its resumed segments."""

    started: str
    before: float = 0.0
    origin: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return self.before + time.monotonic() - self.origin

    def to_state(self) -> dict[str, Any]:
        return {"started": self.started, "train_seconds": round(self.seconds, 1)}

    def resume(self, state: dict[str, Any]) -> None:
        """Continue the clock of a saved state (one saved before clocks were kept leaves it as it is)."""
        if "started" in state:
            self.started, self.before, self.origin = state["started"], float(state["train_seconds"]), time.monotonic()


def save_training(folder: str | Path, parts: Mapping[str, Stateful], step: int, config: dict[str, Any],
                  train_slices: int, clock: TrainingClock, **extra: Any) -> Path:
    """Save the state dicts of `parts` under their names, with the step, the config, the number of training
    slices (or cases), the RNG states and the clock, plus any `extra` entries."""
    return save_state(folder, {**{key: part.state_dict() for key, part in parts.items()}, "step": step,
                               "train_slices": train_slices, "config": config, "rng": rng_state(),
                               "clock": clock.to_state(), **extra})


def restore_training(folder: str | Path, parts: Mapping[str, Stateful], config: dict[str, Any],
                     train_slices: int, clock: TrainingClock) -> int:
    """Load the state `save_training` wrote into `parts`, the RNGs and `clock`, after `check_resume`; returns
    its step."""
    state = load_state(folder)
    check_resume(state, config, train_slices)
    for key, part in parts.items():
        part.load_state_dict(state[key])
    set_rng_state(state["rng"])
    clock.resume(state.get("clock", {}))
    return state["step"]


def check_resume(state: dict[str, Any], config: dict[str, Any], train_slices: int) -> None:
    """Refuse to resume under another config (the `run` section aside) or on other data."""
    changed = [k for k in changed_keys(state["config"], config) if not k.startswith("run.")]
    if changed:
        raise ValueError(f"cannot resume: the config differs from the checkpoint's at {', '.join(changed)}")
    if state["train_slices"] != train_slices:
        raise ValueError(f"cannot resume: the data now gives {train_slices} training slices, "
                         f"the checkpoint was trained on {state['train_slices']}")


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}")
    return out
