"""CycleGAN (document 000): the networks, a few training steps that move the losses, and an inference in each
of the four regimes through the command lines."""
import pytest
import torch

from models.checkpoint import load_model, read_config
from models.cyclegan import BackwardConfig, CycleGANBackward, CycleGANGenerator, PatchGAN, PatchGANConfig, ResnetConfig
from train.__main__ import main as train_main
from translation_helpers import CONFIGS, REGIMES, fit, losses, phantoms, run_regime


def test_the_9_block_generator_has_the_documented_size_and_runs_in_2d_and_3d():
    full = CycleGANGenerator(ResnetConfig(num_modalities=1, image_size=256))
    assert round(sum(p.numel() for p in full.parameters()) / 1e6, 2) == 11.37  # document 000, table of costs
    tiny = dict(base=4, n_blocks=2)
    x = torch.randn(2, 3 * 3, 16, 16)
    assert CycleGANGenerator(ResnetConfig(num_modalities=3, image_size=16, context_slices=1, **tiny))(x).shape == (2, 1, 16, 16)
    x3 = torch.randn(1, 3, 12, 16, 8)
    assert CycleGANGenerator(ResnetConfig(num_modalities=3, image_size=8, spatial_dims=3, **tiny))(x3).shape == (1, 1, 12, 16, 8)
    assert CycleGANBackward(BackwardConfig(out_channels=2, **tiny))(torch.randn(2, 1, 16, 16)).shape == (2, 2, 16, 16)
    logits, features = PatchGAN(PatchGANConfig(base=4, n_layers=1, num_scales=2, image_size=16))(torch.randn(2, 1, 16, 16))
    assert len(logits) == len(features) == 2 and all(len(f) >= 1 for f in features)
    with pytest.raises(ValueError, match="divisible by 4"):
        ResnetConfig(image_size=30)
    with pytest.raises(ValueError, match="at least 64 per side"):
        PatchGANConfig(n_layers=3, num_scales=2, image_size=32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantoms(tmp_path_factory.mktemp("cyclegan-data"))


def test_training_steps_lower_the_paired_and_cycle_losses(data, tmp_path):
    generator = fit("cyclegan", data, tmp_path / "run", 12, "2d")
    l1, cycle = losses(tmp_path / "run", "l1"), losses(tmp_path / "run", "cycle")
    assert l1[-3:].mean() < 0.9 * l1[:3].mean() and cycle[-3:].mean() < cycle[:3].mean(), (l1, cycle)
    assert losses(tmp_path / "run", "identity").size == 12  # one input modality in 2D: the identity term is on
    assert read_config(generator)["family"] == "cyclegan"
    assert load_model(tmp_path / "run" / "cyclegan_backward").config.out_channels == 1


def test_bad_patches_and_reused_run_folders_stop_with_one_line(data, tmp_path, capsys):
    args = ["fit", "--config", str(CONFIGS / "cyclegan-cpu.yaml"), f"--data.roots=[{data}]",
            f"--run.output={tmp_path}", "--model.spatial_dims=3", "--patch.size=[32,34,32]", "--run.progress=false"]
    assert train_main(args) == 2
    assert "patch.size [32, 34, 32]: every side must be a multiple of 4" in capsys.readouterr().err
    (tmp_path / "generator").mkdir()
    assert train_main(args) == 2
    assert "exists already" in capsys.readouterr().err


@pytest.mark.parametrize("regime", REGIMES)
def test_every_regime_trains_and_runs_through_python_m_infer(regime, data, tmp_path):
    run_regime("cyclegan", regime, tmp_path, data)
