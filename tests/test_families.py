"""The registry of model families: checkpoints name their family, training and inference dispatch on it, and a
family added from outside (here, a toy one) trains with `python -m train fit` and runs with `python -m infer`
without any edit to the engine, the runner, the command lines or the training loops."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from helpers import run_cli, save_tiny_checkpoint, tiny_meta, write_case
from models import families
from models.checkpoint import CheckpointError, family_of, load_model, read_config, save_checkpoint
from models.families import FAMILIES, Family, resolve
from train.__main__ import main as train_main

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_resolves(name):
    family = FAMILIES[name]
    assert callable(resolve(family.trainer)) and isinstance(resolve(family.schema), type)
    assert family.predictor is None or callable(resolve(family.predictor))


def test_checkpoints_name_their_family_and_old_ones_still_load(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "new")
    assert read_config(path)["family"] == "hfgan"
    config = json.loads((path / "config.json").read_text())
    del config["family"]  # as written before families were recorded
    (path / "config.json").write_text(json.dumps(config))
    assert family_of(read_config(path)).name == "hfgan" and load_model(path).meta.kind == "generator"
    config["family"] = "pix2pix"  # a generator is not a pix2pix network
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="family pix2pix has no network kind 'generator'"):
        read_config(path)


@pytest.mark.parametrize("argv, message", [
    (["refiner", "--resume"], "the refiner trainer does not take --resume"),
    (["fit", "--set", "model.family=nothing"], "unknown model family 'nothing'"),
    (["segmenter", "--config", str(CONFIGS / "full3d.yaml")], "trains the full3d family, not segmenter"),
])
def test_fit_dispatch_errors_are_one_line(argv, message, capsys):
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_discriminator_checkpoint_is_not_run(tmp_path, capsys):
    from models.discriminator import DiscriminatorConfig, PatchDiscriminator

    disc = PatchDiscriminator(DiscriminatorConfig(image_size=32, base=4))
    save_checkpoint(disc, tmp_path / "disc", tiny_meta(kind="discriminator"))
    write_case(tmp_path / "in", "case")
    assert run_cli(tmp_path / "in", tmp_path / "out", tmp_path / "disc") == 2
    assert "holds the hfgan family's discriminator, not its generator" in capsys.readouterr().err


# A family from outside the repository: a network, its config, a trainer; one `register` call.

@dataclass
class ScaledMeanConfig:
    """What the slice engine reads of a generator's config, and nothing to learn but a scale and an offset."""

    num_modalities: int = 4
    image_size: int = 32
    context_slices: int = 0
    num_views: int = 0


class ScaledMean(nn.Module):
    """The mean of the available inputs, times a learnt scale, plus a learnt offset."""

    def __init__(self, config: ScaledMeanConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = nn.Parameter(torch.ones(()))
        self.offset = nn.Parameter(torch.zeros(()))

    def forward(self, x, available, target, view=None):
        weights = available.float()[:, :, None, None]
        return (x * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True) * self.scale + self.offset


@dataclass
class ToyModel:
    family: str = "scaledmean"


@dataclass
class ToyRun:
    output: str = "runs/toy"
    steps: int = 5


@dataclass
class ToyConfig:
    model: ToyModel = field(default_factory=ToyModel)
    run: ToyRun = field(default_factory=ToyRun)


def fit_scaled_mean(cfg: ToyConfig) -> Path:
    """Learn to map the mean of random inputs to twice it plus one (real optimizer steps)."""
    model = ScaledMean(ScaledMeanConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(cfg.run.steps):
        x = torch.rand(2, 4, 8, 8, generator=generator)
        available = torch.tensor([[True, True, False, True]] * 2)
        loss = (model(x, available, 2) - (2 * x[:, [0, 1, 3]].mean(1, keepdim=True) + 1)).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.meta = tiny_meta(kind="scaledmean")
    return save_checkpoint(model, Path(cfg.run.output) / "scaledmean", model.meta).parent


@pytest.fixture
def toy_family():
    family = families.register(Family(
        "scaledmean", "a learnt scale of the inputs' mean (test plug-in)", {"scaledmean": (ScaledMean, ScaledMeanConfig)},
        schema="test_families:ToyConfig", trainer="test_families:fit_scaled_mean",
        predictor="infer.predictors:slice_predictor"))
    yield family
    families.unregister(family.name)


def test_a_plug_in_family_trains_and_runs_through_the_command_lines(toy_family, tmp_path, capsys):
    config = tmp_path / "toy.yaml"
    config.write_text(f"model: {{family: scaledmean}}\nrun: {{output: {tmp_path / 'run'}, steps: 20}}\n")
    assert train_main(["fit", "--config", str(config)]) == 0
    weights = tmp_path / "run" / "scaledmean"
    assert read_config(weights)["family"] == "scaledmean"
    trained = load_model(weights)
    assert trained.scale.item() > 1.5 and trained.offset.item() > 0.5  # it learnt towards 2 x mean + 1
    write_case(tmp_path / "in", "case", shape=(20, 18, 6))
    assert run_cli(tmp_path / "in", tmp_path / "out", weights) == 0
    out = np.asanyarray(nib.load(tmp_path / "out" / "case-t2f.nii.gz").dataobj)
    assert out.shape == (20, 18, 6) and np.isfinite(out).all() and out.max() > 0
