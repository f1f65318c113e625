"""SynDiff (document 000): the diffusion schedule and sampler, a few training steps that move the losses, and
an inference in each of the four regimes through the command lines."""
import dataclasses

import pytest
import torch

from models.syndiff import SynDiffConfig, SynDiffDiscriminator, SynDiffGenerator, TimeDiscriminatorConfig, VPSchedule
from translation_helpers import REGIMES, fit, losses, phantoms, run_regime

TINY = SynDiffConfig(num_modalities=3, image_size=16, channels=(8, 8), attention_levels=(False, False),
                     norm_groups=4, num_head_channels=8, latent_dim=4, num_res_blocks=1)


def test_the_schedule_is_variance_preserving_and_ends_at_the_prediction():
    schedule = VPSchedule(4, 0.1, 20.0)
    torch.testing.assert_close(schedule.a_cum ** 2 + schedule.sigma_cum ** 2, torch.ones(5))
    assert schedule.a_cum[-1] < 0.01  # after 4 steps the target is (almost) pure noise
    x0, x1 = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t0 = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(schedule.posterior(x0, x1, t0, torch.randn_like(x0)), x0)  # no noise at t = 0
    t = torch.tensor([1, 3])
    x_t, x_next = schedule.q_pair(torch.zeros(20000, 1, 1, 1), t.repeat(10000))
    assert x_next[0::2].std().item() == pytest.approx(schedule.sigma_cum[2].item(), rel=0.05)
    assert x_next[1::2].std().item() == pytest.approx(schedule.sigma_cum[4].item(), rel=0.05)


def test_sampling_is_repeatable_and_follows_the_seed():
    torch.manual_seed(0)
    generator = SynDiffGenerator(TINY).eval()
    for parameter in generator.parameters():  # MONAI zero-initialises the output layer: x_0 would be 0
        torch.nn.init.normal_(parameter, std=0.2)
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        first, again = generator(x), generator(x)
        reseeded = SynDiffGenerator(dataclasses.replace(TINY, sample_seed=1))
        reseeded.load_state_dict(generator.state_dict())
        other = reseeded.eval()(x)
    assert first.shape == (2, 1, 16, 16) and torch.equal(first, again) and not torch.equal(first, other)
    disc = SynDiffDiscriminator(TimeDiscriminatorConfig(image_size=16, channels=(8, 8), norm_groups=4))
    assert disc(first, x[:, :1], torch.tensor([0, 3])).shape == (2, 1)
    volume = SynDiffGenerator(dataclasses.replace(TINY, spatial_dims=3, image_size=8)).eval()
    with torch.inference_mode():
        assert volume(torch.randn(1, 3, 8, 16, 8)).shape == (1, 1, 8, 16, 8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantoms(tmp_path_factory.mktemp("syndiff-data"))


def test_training_steps_lower_the_x0_loss(data, tmp_path):
    fit("syndiff", data, tmp_path / "run", 12, "2d", "optim.warmup_steps=3")
    l1 = losses(tmp_path / "run", "l1")
    assert l1[-3:].mean() < 0.9 * l1[:3].mean(), l1
    assert {"adversarial", "d_real", "d_fake", "r1"} <= set(open(tmp_path / "run" / "log.csv").readline().strip().split(","))


@pytest.mark.parametrize("regime", REGIMES)
def test_every_regime_trains_and_runs_through_python_m_infer(regime, data, tmp_path):
    run_regime("syndiff", regime, tmp_path, data)
