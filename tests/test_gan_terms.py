"""The shared GAN terms of document 000 (`train.gan_terms`) on tensors with known values."""
import pytest
import torch
from torch import nn

from train.gan_terms import (GanTermWeights, LazyR1, edge_loss, ema_copy, ema_update, feature_matching, lsgan,
                             lsgan_discriminator, r1_penalty, ssim_term)


def test_lsgan_known_values_and_scales():
    ones, zeros = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert lsgan(ones, real=True).item() == 0.0 and lsgan(ones, real=False).item() == 1.0
    assert lsgan(zeros, real=True).item() == 1.0
    # two scales: (0 + 4) / 2 for "real" with maps of 1 and 3
    assert lsgan([ones, 3 * ones], real=True).item() == pytest.approx(2.0)
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


def test_r1_of_a_known_function():
    # D(x) = sum(w * x): grad = w everywhere, so ||grad||^2 = sum(w^2) per sample.
    w = torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1)
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    assert r1_penalty(w * x, x).item() == pytest.approx(4 * 14.0)
    # D(x) = sum(x^2) / 2 (two scales share it): grad = x
    x = torch.full((2, 1, 3, 3), 2.0, requires_grad=True)
    assert r1_penalty([0.5 * x ** 2, 0 * x], x).item() == pytest.approx(9 * 4.0)
    lazy = LazyR1(gamma=10.0, every=16)
    assert lazy.due(0) and lazy.due(32) and not lazy.due(5) and not LazyR1(0.0, 16).due(0)
    assert lazy(0.5 * x ** 2, x).item() == pytest.approx(0.5 * 10 * 16 * 36.0)


def test_r1_penalty_is_differentiable_in_the_discriminator():
    disc = nn.Conv2d(1, 1, 1, bias=False)
    x = torch.randn(2, 1, 4, 4, requires_grad=True)
    r1_penalty(disc(x), x).backward()
    # ||grad||^2 = 16 w^2 per sample: d/dw = 32 w
    assert disc.weight.grad.item() == pytest.approx(32 * disc.weight.item(), rel=1e-5)


def test_edge_loss_on_ramps_2d_and_3d():
    ramp = torch.arange(5.0).view(1, 1, 5, 1).expand(1, 1, 5, 5)
    assert edge_loss(ramp, ramp + 7.0).item() == 0.0  # an offset has no edges
    assert edge_loss(2 * ramp, ramp).item() == pytest.approx(0.5)  # |2-1| along H, 0 along W
    cube = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(1, 1, 4, 4, 4)
    assert edge_loss(3 * cube, cube).item() == pytest.approx(2.0 / 3)


def test_ssim_term_is_zero_for_identical_images_and_empty_masks():
    g = torch.Generator().manual_seed(0)
    for shape in ((2, 1, 16, 16), (1, 1, 16, 16, 16)):
        x = torch.rand(shape, generator=g)
        ones = torch.ones_like(x, dtype=torch.bool)
        assert ssim_term(x, x, ones).item() == pytest.approx(0.0, abs=1e-5)
        assert ssim_term(x, 1 - x, ones).item() > 0.5
        assert ssim_term(x, 1 - x, ~ones).item() == 0.0


def test_ema_update_known_values():
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    ema = ema_copy(model)
    assert not any(p.requires_grad for p in ema.parameters())
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema_update(ema, model, decay=0.75)
    assert ema.weight.item() == pytest.approx(0.75 * 1 + 0.25 * 3)
    ema_update(ema, model, decay=0.75)
    assert ema.weight.item() == pytest.approx(0.75 * 1.5 + 0.25 * 3) and ema.bias.item() == 0.0
    norm = nn.BatchNorm1d(2)
    norm_ema = ema_copy(norm)
    norm.running_mean.fill_(5.0)
    ema_update(norm_ema, norm, decay=0.9)
    assert norm_ema.running_mean.tolist() == [5.0, 5.0]  # buffers are copied, not averaged


def test_weights_refuse_bad_settings():
    with pytest.raises(ValueError):
        GanTermWeights(r1_every=0)
    with pytest.raises(ValueError):
        GanTermWeights(ema_decay=1.0)
