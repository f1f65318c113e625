"""Generator, discriminator, segmenter and refiner: shapes, parameter counts, semantics."""
import pytest
import torch

from models.discriminator import DiscriminatorConfig, PatchDiscriminator
from models.generator import GeneratorConfig, HFGANGenerator
from models.refiner import Refiner3D, RefinerConfig
from models.segmenter import SliceSegmenter

torch.manual_seed(0)


def n_params(model: torch.nn.Module) -> int:
    """How we count: every parameter tensor (trainable weights, biases, position embeddings); no buffers."""
    return sum(p.numel() for p in model.parameters())


def batch(config: GeneratorConfig, b: int, missing: int = 0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, config.num_modalities * config.slices_per_modality, config.image_size, config.image_size, generator=g)
    available = torch.ones(b, config.num_modalities, dtype=torch.bool)
    available[:, missing] = False
    target = torch.full((b,), missing, dtype=torch.long)
    return x, available, target


@pytest.mark.parametrize("m", [4, 2])
@pytest.mark.parametrize("k", [0, 1])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("size", [240, 256])
def test_generator_shapes(m, k, b, size):
    config = GeneratorConfig(num_modalities=m, dim=8, context_slices=k, image_size=size, num_views=3)
    model = HFGANGenerator(config).eval()
    x, available, target = batch(config, b, missing=m - 1)
    view = torch.arange(b) % 3
    with torch.no_grad():
        out, z = model.forward_with_features(x, available, target, view)
    assert out.shape == (b, 1, size, size)
    assert z.shape == (b, 80, size // 16, size // 16)
    assert torch.isfinite(out).all()


def test_full_brasyn_parameter_count():
    published = 80_039_041  # the published run24 generator, counted the same way
    count = n_params(HFGANGenerator(GeneratorConfig()))
    assert abs(count - 80.04e6) / 80.04e6 < 0.01
    assert count == published


def test_generator_rejects_wrong_input_shape():
    model = HFGANGenerator(GeneratorConfig(dim=8))
    x, available, target = batch(model.config, 1)
    with pytest.raises(ValueError, match="generator input"):
        model(x[:, :3], available, target)
    with pytest.raises(ValueError, match="at least one"):
        model(x, torch.zeros_like(available), target)


@pytest.mark.parametrize("gate", ["channel", "first_channel"])
@pytest.mark.parametrize("k", [0, 1])
def test_missing_channel_values_do_not_matter(gate, k):
    config = GeneratorConfig(dim=8, context_slices=k, fusion_gate=gate)
    model = HFGANGenerator(config).eval()
    x, available, target = batch(config, 2, missing=2)
    x2 = x.clone()
    span = config.slices_per_modality
    x2[:, 2 * span:3 * span] = torch.randn_like(x2[:, 2 * span:3 * span]) * 100
    with torch.no_grad():
        assert torch.equal(model(x, available, target), model(x2, available, target))
        # and available channels do matter
        x3 = x.clone()
        x3[:, :span] += 1.0
        assert not torch.allclose(model(x, available, target), model(x3, available, target))


def test_per_sample_availability_is_vectorised():
    """A batch mixing availability patterns equals the samples run one by one."""
    model = HFGANGenerator(GeneratorConfig(dim=8, fusion_gate="first_channel")).eval()
    x, _, _ = batch(model.config, 3)
    available = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    target = torch.tensor([3, 2, 1])
    with torch.no_grad():
        together = model(x, available, target)
        alone = torch.cat([model(x[i:i + 1], available[i:i + 1], target[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(dim=2, dim_mults=(1,)), dict(dim=8, num_heads=3), dict(image_size=250)])
def test_invalid_sizes_are_rejected_early(kwargs):
    with pytest.raises(ValueError):
        GeneratorConfig(**kwargs)


def test_generator_is_deterministic_in_eval():
    model = HFGANGenerator(GeneratorConfig(dim=8, dropout=0.1)).eval()
    x, available, target = batch(model.config, 2)
    with torch.no_grad():
        assert torch.equal(model(x, available, target), model(x, available, target))


def test_view_embedding_required_when_configured():
    model = HFGANGenerator(GeneratorConfig(dim=8, num_views=3)).eval()
    x, available, target = batch(model.config, 1)
    with pytest.raises(ValueError, match="view"):
        model(x, available, target)


@pytest.mark.parametrize("size", [240, 256])
def test_discriminator_heads(size):
    d = PatchDiscriminator(DiscriminatorConfig(num_classes=4, image_size=size))
    patches, classes = d(torch.randn(2, 1, size, size))
    assert patches.shape[:2] == (2, 1) and patches.shape[-1] == size // 8 - 2
    assert classes.shape == (2, 4)


def test_segmenter_size_and_shape():
    seg = SliceSegmenter()
    assert 1.7e6 < n_params(seg) < 2.0e6
    assert seg(torch.randn(1, 4, 240, 240)).shape == (1, 4, 240, 240)


def test_refiner_is_small_and_starts_as_identity():
    refiner = Refiner3D(RefinerConfig())
    assert n_params(refiner) < 1_000_000
    synth = torch.randn(1, 1, 12, 16, 20)
    out = refiner(synth, torch.randn(1, 4, 12, 16, 20), torch.tensor([1]))
    assert torch.equal(out, synth)
