"""The GAN step's random draws: input masks and cycle targets."""
import torch

from train.families.hfgan import availability, cycle_target, step_generator


def test_three_available_by_default():
    available = availability(5, 4, target=2, random_subsets=False, gen=step_generator(0, 0, 0))
    assert available.tolist() == [[True, True, False, True]] * 5


def test_random_subsets_never_include_the_target_and_cover_every_size():
    gen = step_generator(0, 0, 0)
    available = availability(400, 4, target=1, random_subsets=True, gen=gen)
    assert not available[:, 1].any()
    assert set(available.sum(dim=1).tolist()) == {1, 2, 3}


def test_cycle_target_is_one_of_the_available():
    gen = step_generator(0, 0, 0)
    available = availability(300, 4, target=0, random_subsets=True, gen=gen)
    second = cycle_target(available, gen)
    assert available[torch.arange(300), second].all()
    full = cycle_target(availability(300, 4, 0, False, gen), gen)
    assert set(full.tolist()) == {1, 2, 3}  # uniform over the available ones: all appear


def test_draws_depend_only_on_seed_step_and_rank():
    a = torch.rand(3, generator=step_generator(1, 7, 0))
    assert torch.equal(a, torch.rand(3, generator=step_generator(1, 7, 0)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 7, 1)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 8, 0)))
