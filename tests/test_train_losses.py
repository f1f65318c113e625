"""Loss terms on hand-made tensors with known values."""
import math

import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from train.losses import AdversarialLoss, FeatureCosineLoss, FocalTverskyLoss, MaskedSSIMLoss, NGFLoss


def test_adversarial_loss_known_values():
    loss = AdversarialLoss()
    zeros = torch.zeros(2, 1, 3, 3)
    assert loss(zeros, real=True).item() == pytest.approx(math.log(2))
    assert loss(zeros, real=False).item() == pytest.approx(math.log(2))
    big = torch.full((1, 1, 2, 2), 20.0)
    assert loss(big, real=True).item() == pytest.approx(0.0, abs=1e-8)
    assert loss(big, real=False).item() == pytest.approx(20.0, rel=1e-6)


def test_feature_cosine_loss_parallel_orthogonal_opposite():
    loss = FeatureCosineLoss()
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(2, 2, 1, 1)
    assert loss(a, 3 * a).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(a, -a).item() == pytest.approx(2.0)
    b = torch.tensor([[0.0, 5.0], [1.0, 0.0]]).view(2, 2, 1, 1)
    assert loss(a, b).item() == pytest.approx(1.0)


def test_masked_ssim_matches_torchmetrics_on_the_whole_image():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 1, 32, 32, generator=g)
    pred = target + 0.2 * torch.rand(2, 1, 32, 32, generator=g)
    loss = MaskedSSIMLoss()(pred, target, [torch.ones_like(target, dtype=torch.bool)])
    data_range = (target.max() - target.min()).item()
    reference = structural_similarity_index_measure(pred, target, data_range=data_range)
    assert loss.item() == pytest.approx(1.0 - reference.item(), abs=1e-5)


def test_masked_ssim_only_sees_its_region():
    target = torch.linspace(-1, 3, 40 * 40).view(1, 1, 40, 40)
    pred = target.clone()
    pred[..., 25:, :] = 5.0  # wrong far (>= 5 pixels, half a window) from the region
    region = torch.zeros_like(target, dtype=torch.bool)
    region[..., :20, :] = True
    empty = torch.zeros_like(region)
    ssim = MaskedSSIMLoss()
    assert ssim(pred, target, [region]).item() == pytest.approx(0.0, abs=1e-5)
    assert ssim(pred, target, [region, empty]).item() == pytest.approx(0.0, abs=1e-5)  # empty region ignored
    assert ssim(pred, target, [empty]).item() == 0.0
    assert ssim(pred, target, [~region]).item() > 0.1


def test_masked_ssim_is_float32_under_reduced_precision():
    target = torch.rand(1, 1, 24, 24).to(torch.bfloat16)
    loss = MaskedSSIMLoss()(target, target, [torch.ones(1, 1, 24, 24, dtype=torch.bool)])
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_focal_tversky_known_value():
    # 2 classes on 4 pixels; softmax probabilities of class 1 = p, labels = y.
    p = torch.tensor([0.9, 0.2, 0.6, 0.1])
    y = torch.tensor([1, 0, 1, 0])
    logits = torch.stack([torch.log(1 - p), torch.log(p)]).view(1, 2, 2, 2)
    labels = y.view(1, 2, 2)
    alpha, beta, gamma = 0.3, 0.7, 0.75  # alpha weighs false positives, beta false negatives

    def index(prob, truth):
        tp, fp, fn = (prob * truth).sum(), (prob * (1 - truth)).sum(), ((1 - prob) * truth).sum()
        return (tp + 1e-5) / (tp + alpha * fp + beta * fn + 1e-5)

    yf = y.float()
    expected = (1 - index(1 - p, 1 - yf)) ** gamma + (1 - index(p, yf)) ** gamma
    loss = FocalTverskyLoss(alpha, beta, gamma)(logits, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_focal_tversky_near_zero_for_a_perfect_prediction_and_differentiable():
    labels = torch.tensor([[[0, 1], [2, 3]]])
    logits = (20 * torch.nn.functional.one_hot(labels, 4).permute(0, 3, 1, 2).float()).requires_grad_()
    loss = FocalTverskyLoss()(logits, labels)
    assert loss.item() < 1e-3
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_ngf_is_zero_for_identical_edges_whatever_the_contrast():
    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    a = (0.3 * x + 0.1 * y ** 1.5)[None, None]  # no flat pixel
    loss = NGFLoss(alpha=0.0)
    assert loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(a, -5 * a + 2).item() == pytest.approx(0.0, abs=1e-6)  # contrast-inverted, same edges
    assert NGFLoss(alpha=0.08)(10 * a, 10 * a).item() < 0.01  # edges much stronger than alpha
    assert loss(x[None, None], y[None, None]).item() == pytest.approx(1.0)  # perpendicular edges


def test_ngf_matches_a_hand_computed_value():
    a = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])[None, None]  # gradient (x 1, y 0) everywhere
    b = torch.tensor([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]])[None, None]  # gradient (x 1, y 1) everywhere
    alpha = 0.5
    # <ga, gb> = 1, |ga|^2 = 1, |gb|^2 = 2: 1 - 1 / ((1 + 0.25) * (2 + 0.25)) at every pixel
    assert NGFLoss(alpha)(a, b).item() == pytest.approx(1.0 - 1.0 / (1.25 * 2.25))
