"""The shared GAN terms of document 000 (`train.gan_terms`) on tensors with known values."""
import pytest
import torch
from torch import nn

from train.gan_terms import (EMAGenerator, LazyR1, edge_loss, feature_matching, lsgan, lsgan_discriminator,
                             lsgan_generator, r1_penalty)


def test_lsgan_known_values_and_scales():
    ones, zeros = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert lsgan(ones, real=True).item() == 0.0 and lsgan(ones, real=False).item() == 1.0
    assert lsgan(zeros, real=True).item() == 1.0
    # two scales: (0 + 4) / 2 for "real" with maps of 1 and 3
    assert lsgan([ones, 3 * ones], real=True).item() == pytest.approx(2.0)
    assert lsgan_generator([zeros, ones]).item() == pytest.approx(0.5)
    assert lsgan_discriminator(ones, zeros).item() == 0.0
    assert lsgan_discriminator(zeros, ones).item() == pytest.approx(1.0)


def test_feature_matching_is_l1_and_trains_only_the_fake_side():
    real = [torch.zeros(1, 2, 2, 2, requires_grad=True), torch.ones(1, 1, 4)]
    fake = [torch.full((1, 2, 2, 2), 0.5, requires_grad=True), torch.full((1, 1, 4), 3.0)]
    loss = feature_matching(real, fake)
    assert loss.item() == pytest.approx((0.5 + 2.0) / 2)
    loss.backward()
    assert real[0].grad is None and fake[0].grad is not None
    with pytest.raises(ValueError):
        feature_matching(real, fake[:1])
    # one list per scale (MONAI's multi-scale discriminator): the same mean over all layers
    assert feature_matching([real[:1], real[1:]], [fake[:1], fake[1:]]).item() == pytest.approx(1.25)


def test_r1_of_a_known_function():
    # D(x) = sum(w * x): grad = w everywhere, so ||grad||^2 = 4 pixels * sum(w^2) per sample.
    w = torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1)
    x = torch.randn(4, 3, 2, 2)
    assert r1_penalty(lambda v: w * v, x).item() == pytest.approx(4 * 14.0)
    assert not x.requires_grad  # the caller's tensor is left alone
    # D(x) = sum(x^2) / 2 (the second scale adds nothing): grad = x, ||x||^2 = 9 * 4
    x = torch.full((2, 1, 3, 3), 2.0)
    assert r1_penalty(lambda v: [0.5 * v ** 2, 0 * v], x).item() == pytest.approx(36.0)
    lazy = LazyR1(gamma=10.0, every=16)
    assert lazy.due(0) and lazy.due(32) and not lazy.due(5) and not LazyR1(0.0, 16).due(0)
    assert lazy(lambda v: 0.5 * v ** 2, x).item() == pytest.approx(0.5 * 10 * 16 * 36.0)


def test_r1_penalty_is_differentiable_in_the_discriminator():
    disc = nn.Conv2d(1, 1, 1, bias=False)
    x = torch.randn(2, 1, 4, 4)
    r1_penalty(disc, x).backward()
    # ||grad||^2 = 16 w^2 per sample: d/dw = 32 w
    assert disc.weight.grad.item() == pytest.approx(32 * disc.weight.item(), rel=1e-5)


def test_edge_loss_on_ramps_2d_and_3d():
    ramp = torch.arange(5.0).view(1, 1, 5, 1).expand(1, 1, 5, 5)
    assert edge_loss(ramp, ramp + 7.0).item() == 0.0  # an offset has no edges
    assert edge_loss(2 * ramp, ramp).item() == pytest.approx(0.5)  # |2-1| along H, 0 along W
    cube = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(1, 1, 4, 4, 4)
    assert edge_loss(3 * cube, cube).item() == pytest.approx(2.0 / 3)


def test_ema_update_known_values():
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    ema = EMAGenerator(model, decay=0.75)
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(0.75 * 1 + 0.25 * 3)
    ema.update(model)
    assert ema.module.weight.item() == pytest.approx(0.75 * 1.5 + 0.25 * 3) and ema.module.bias.item() == 0.0
    assert model.weight.item() == 3.0  # the trained model is untouched
    norm = nn.BatchNorm1d(2)
    norm_ema = EMAGenerator(norm, decay=0.9)
    norm.running_mean.fill_(5.0)
    norm_ema.update(norm)
    assert norm_ema.module.running_mean.tolist() == [5.0, 5.0]  # buffers are copied, not averaged
    latest = EMAGenerator(model, decay=0.0)
    with torch.no_grad():
        model.weight.fill_(-1.0)
    latest.update(model)
    assert latest.module.weight.item() == -1.0
    with pytest.raises(ValueError):
        EMAGenerator(model, decay=1.0)
