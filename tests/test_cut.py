"""CUT (document 000): PatchNCE on known tensors, a few training steps that move the losses, and an inference
in each of the four regimes through the command lines."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.checkpoint import load_model
from models.cut import CUTGenerator, HeadsConfig, PatchNCEHeads
from models.cyclegan import ResnetConfig
from train.families.cut import gather, patch_nce, sample_locations
from translation_helpers import REGIMES, fit, losses, phantoms, run_regime


def test_patch_nce_on_known_embeddings():
    identity = torch.eye(2)[None]  # two locations, orthogonal unit embeddings
    # each query: logit 1 for its positive, 0 for the one negative -> -log(e / (e + 1))
    assert patch_nce(identity, identity, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)))
    assert patch_nce(identity, identity, 0.01).item() < 1e-6  # a sharp temperature: the positive wins outright
    swapped = identity.flip(1)  # every query's positive is the other location's key
    assert patch_nce(identity, swapped, 0.07).item() > 10
    query = F.normalize(torch.randn(3, 5, 4), dim=-1).requires_grad_(True)
    key = F.normalize(torch.randn(3, 5, 4), dim=-1).requires_grad_(True)
    patch_nce(query, key, 0.07).backward()
    assert query.grad.abs().sum() > 0 and key.grad is None  # the keys are detached


def test_locations_and_heads():
    feature = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    where = sample_locations(feature, 256, torch.Generator().manual_seed(0))
    assert sorted(where.tolist()) == list(range(20))  # fewer locations than asked: all of them, once
    vectors = gather(feature, where[:3])
    assert vectors.shape == (2, 3, 3)
    torch.testing.assert_close(vectors[1, 0], feature[1, :, where[0] // 5, where[0] % 5])
    heads = PatchNCEHeads(HeadsConfig(channels=(3, 6), dim=128))
    out = heads([torch.randn(2, 256, 3), torch.randn(2, 256, 6)])
    assert [o.shape for o in out] == [(2, 256, 128)] * 2
    torch.testing.assert_close(out[1].norm(dim=-1), torch.ones(2, 256))


def test_the_generator_returns_four_encoder_layers():
    generator = CUTGenerator(ResnetConfig(num_modalities=3, image_size=16, base=4, n_blocks=3))
    layers = generator.encoder_features(torch.randn(2, 3, 16, 16))
    assert [tuple(f.shape[1:]) for f in layers] == [(4, 16, 16), (8, 8, 8), (16, 4, 4), (16, 4, 4)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return phantoms(tmp_path_factory.mktemp("cut-data"))


def test_training_steps_lower_the_paired_and_nce_losses(data, tmp_path):
    generator = fit("cut", data, tmp_path / "run", 12, "2d")
    l1, nce = losses(tmp_path / "run", "l1"), losses(tmp_path / "run", "nce")
    assert l1[-3:].mean() < 0.9 * l1[:3].mean() and nce[-3:].mean() < nce[:3].mean(), (l1, nce)
    assert load_model(generator).meta.kind == "cut_generator"
    assert load_model(tmp_path / "run" / "cut_heads").config.channels == (8, 16, 32, 32)


@pytest.mark.parametrize("regime", REGIMES)
def test_every_regime_trains_and_runs_through_python_m_infer(regime, data, tmp_path):
    run_regime("cut", regime, tmp_path, data)
