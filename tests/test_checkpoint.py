"""Checkpoint format round trip, failure modes, and the published-weights converter."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conventions.tasks import BRASYN
from models.checkpoint import CheckpointError, CheckpointMeta, load_model, save_checkpoint
from models.convert import ConversionError, convert_state_dict, infer_config, main as convert_main
from models.generator import GeneratorConfig, HFGANGenerator
from models.infuser import TransformerLayer
from models.refiner import Refiner3D
from models.segmenter import SegmenterConfig, SliceSegmenter


def meta(kind="generator"):
    return CheckpointMeta(kind=kind, task="brasyn", modalities=BRASYN.modalities,
                          normalization=dict(BRASYN.normalization), views=("axial", "sagittal"),
                          provenance={"steps": 0})


def test_round_trip_identical_outputs(tmp_path):
    model = HFGANGenerator(GeneratorConfig(dim=8, context_slices=1, num_views=3)).eval()
    save_checkpoint(model, tmp_path / "ckpt", meta())
    loaded = load_model(tmp_path / "ckpt")
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.meta.normalization == BRASYN.normalization and loaded.meta.views == ("axial", "sagittal")
    x = torch.randn(2, 12, 240, 240)
    available = torch.tensor([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=torch.bool)
    target, view = torch.tensor([2, 0]), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(model(x, available, target, view), loaded(x, available, target, view))
        assert torch.equal(loaded(x, available, target, view), loaded(x, available, target, view))


def test_config_json_is_self_describing(tmp_path):
    save_checkpoint(Refiner3D(), tmp_path, meta("refiner"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["kind"] == "refiner" and config["modalities"] == list(BRASYN.modalities)
    assert config["normalization"]["t1c"]["clip_max"] == 8664.0
    assert isinstance(load_model(tmp_path), Refiner3D)


def test_segmenter_round_trip(tmp_path):
    """MONAI's DynUNet registers blocks twice (shared tensors); the checkpoint still saves and reloads."""
    model = SliceSegmenter(SegmenterConfig(filters=(8, 16, 32, 64))).eval()
    save_checkpoint(model, tmp_path, meta("segmenter"))
    loaded = load_model(tmp_path, kind="segmenter")
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(tmp_path)
    save_checkpoint(HFGANGenerator(GeneratorConfig(dim=8)), tmp_path, meta())
    with pytest.raises(CheckpointError, match="expected a refiner"):
        load_model(tmp_path, kind="refiner")
    config = json.loads((tmp_path / "config.json").read_text())
    config["arch"]["dim"] = 16
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path)
    config["arch"]["surprise"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown generator config keys"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    config["arch"].pop("surprise")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unreadable"):
        load_model(tmp_path)


DROP = object()


def _set(config, dotted, value):
    """config with the entry at `dotted` ('arch.dim') replaced by `value`, or removed when `value` is DROP."""
    *parents, key = dotted.split(".")
    for parent in parents:
        config = config[parent]
    if value is DROP:
        del config[key]
    else:
        config[key] = value


@pytest.mark.parametrize("entry, value, message", [
    ("arch.mlp_activation", "swish", "invalid generator config: mlp_activation must be one of silu, gelu, got 'swish'"),
    ("arch", DROP, "arch is missing"),
    ("arch.dim", "8", "generator config: dim must be int, got '8'"),
    ("arch.dropout", None, "generator config: dropout must be float, got None"),
    ("arch.dim_mults", [1, "2"], "generator config: dim_mults must be tuple[int, ...], got [1, '2']"),
    ("kind", "transformer", "unknown network kind 'transformer'"),
    ("modalities", "t1c", "modalities must be a JSON array, got 't1c'"),
    ("views", [0], "modalities and views must be arrays of names"),
    ("normalization.t1c.std", 0, "normalization of t1c: std must be above 0, got 0"),
    ("normalization.t1c.std", -2.0, "normalization of t1c: std must be above 0, got -2.0"),
    ("normalization.t1c.mean", "1000", "normalization of t1c: mean must be float, got '1000'"),
    ("normalization.t2f", {"kind": "window", "low": 5, "high": 5}, "normalization of t2f: low (5) must be below"),
    ("normalization.t2w", {"clip_max": 1}, "normalization of t2w: ZScoreNorm.__init__() missing 2 required"),
])
def test_malformed_config_is_one_clear_error(tmp_path, entry, value, message):
    save_checkpoint(HFGANGenerator(GeneratorConfig(dim=8)), tmp_path, meta())
    config = json.loads((tmp_path / "config.json").read_text())
    _set(config, entry, value)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as raised:
        load_model(tmp_path)
    assert str(raised.value).startswith(f"{tmp_path / 'config.json'}: {message}") and "\n" not in str(raised.value)


def test_malformed_config_exits_2_on_the_command_line(tmp_path, capsys):
    from helpers import run_cli, write_case

    save_checkpoint(HFGANGenerator(GeneratorConfig(dim=8)), tmp_path / "ckpt", meta())
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["normalization"]["t1c"]["std"] = 0
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    write_case(tmp_path / "in", "a")
    assert run_cli(tmp_path / "in", tmp_path / "out", tmp_path / "ckpt") == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'ckpt' / 'config.json'}: normalization of t1c: std must "
                                       "be above 0, got 0\n")
    assert not (tmp_path / "out").exists()


def _fixture_io(shared_fixtures):
    io = load_file(str(shared_fixtures / "brasyn25_tiny_grouped_io.safetensors"))
    available = torch.ones(3, 4, dtype=torch.bool)
    available[torch.arange(3), io["missing"]] = False
    return io, available


def _run(model, io, available):
    with torch.no_grad():
        return model.forward_with_features(io["input"], available, io["missing"])


def test_converted_tiny_model_reproduces_published_output(shared_fixtures):
    published = load_file(str(shared_fixtures / "brasyn25_tiny_grouped.safetensors"))
    constructor = json.loads((shared_fixtures / "brasyn25_tiny_grouped.json").read_text())["constructor"]
    config, state = convert_state_dict(published, num_heads=constructor["num_heads"])
    assert config.dim == constructor["dim"] and list(config.dim_mults) == constructor["dim_mults"]
    model = HFGANGenerator(config).eval()
    model.load_state_dict(state, strict=True)
    io, available = _fixture_io(shared_fixtures)
    out, z = _run(model, io, available)
    assert (out - io["output"]).abs().max() <= 1e-4
    assert (z - io["bottleneck"]).abs().max() <= 1e-4


def test_separate_encoder_layout_converts_to_the_same_function(shared_fixtures):
    """Split the grouped published encoder into the separate-encoder layout: same output after conversion."""
    grouped = load_file(str(shared_fixtures / "brasyn25_tiny_grouped.safetensors"))
    separate = {}
    for key, tensor in grouped.items():
        if key.startswith("encoder.encoder_middles."):
            rest = key.removeprefix("encoder.encoder_middles.")
            for i, chunk in enumerate(tensor.chunk(4, dim=0)):
                separate[f"module.encoder.encoder_middles.{i}.{rest}"] = chunk.clone()
        else:
            separate[f"module.{key}"] = tensor
    config, state = convert_state_dict(separate)
    model = HFGANGenerator(config).eval()
    model.load_state_dict(state, strict=True)
    io, available = _fixture_io(shared_fixtures)
    assert (_run(model, io, available)[0] - io["output"]).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ["run24_grouped", "run25_grouped_view", "run14_separate"])
def test_published_parameter_names_convert(shared_fixtures, name):
    spec = json.loads((shared_fixtures / f"brasyn25_{name}_state_dict.json").read_text())
    published = {k: torch.zeros(shape) for k, shape in spec["tensors"].items()}
    config, state = convert_state_dict(published)
    c = spec["constructor"]
    assert (config.dim, list(config.dim_mults), config.n_layers) == (c["dim"], c["dim_mults"], c["n_layers"])
    assert (config.num_views > 0) == c["infuse_view"] and config.mlp_activation == ("gelu" if c["infuse_view"] else "silu")
    model = HFGANGenerator(config)
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters()) == spec["num_parameters"]


def test_multihead_attention_layout_matches_torch():
    """The view-infuser models use torch's MultiheadAttention + Linear-GELU-Linear: our layer computes the same."""
    torch.manual_seed(0)
    dim, heads = 32, 4
    mha = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
    norm1, norm2 = torch.nn.LayerNorm(dim, eps=1e-6), torch.nn.LayerNorm(dim, eps=1e-6)
    ffn = torch.nn.Sequential(torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim))
    ours = TransformerLayer(dim, heads, 4, "gelu", 0.0).eval()
    ours.load_state_dict({
        "norm1.weight": norm1.weight, "norm1.bias": norm1.bias, "norm2.weight": norm2.weight, "norm2.bias": norm2.bias,
        "attn.qkv.weight": mha.in_proj_weight, "attn.qkv.bias": mha.in_proj_bias,
        "attn.proj.weight": mha.out_proj.weight, "attn.proj.bias": mha.out_proj.bias,
        "mlp.fc1.weight": ffn[0].weight, "mlp.fc1.bias": ffn[0].bias, "mlp.fc2.weight": ffn[2].weight, "mlp.fc2.bias": ffn[2].bias,
    })
    x = torch.randn(2, 10, dim)
    with torch.no_grad():
        h = norm1(x)
        ref = x + mha(h, h, h, need_weights=False)[0]
        ref = ref + ffn(norm2(ref))
        torch.testing.assert_close(ours(x), ref, rtol=1e-5, atol=1e-5)


def test_convert_command(shared_fixtures, tmp_path, capsys):
    assert convert_main([str(shared_fixtures / "brasyn25_tiny_grouped.safetensors"), str(tmp_path / "ckpt"),
                         "--views", "axial,sagittal"]) == 0
    model = load_model(tmp_path / "ckpt", kind="generator")
    assert model.meta.views == ("axial", "sagittal") and model.meta.provenance["sha256"]
    io, available = _fixture_io(shared_fixtures)
    assert (_run(model, io, available)[0] - io["output"]).abs().max() <= 1e-4


def test_convert_rejects_foreign_files(tmp_path):
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ConversionError):
        infer_config(load_file(str(tmp_path / "x.safetensors")))
    assert convert_main([str(tmp_path / "x.safetensors"), str(tmp_path / "out")]) == 1


def test_bundled_slice_segmenter_sees_the_bundled_generators_units():
    """weights/slice-segmenter feeds the Tversky term of a run that starts from weights/brasyn: same modalities,
    same per-case scaling, logits of the four label classes."""
    from conventions.tasks import BRASYN_CASE_NORMALIZATION

    weights = Path(__file__).resolve().parents[1] / "weights"
    segmenter, generator = load_model(weights / "slice-segmenter", kind="segmenter"), load_model(weights / "brasyn")
    assert segmenter.meta.modalities == generator.meta.modalities
    assert segmenter.meta.normalization == generator.meta.normalization == BRASYN_CASE_NORMALIZATION
    assert segmenter(torch.zeros(1, 4, 240, 240)).shape == (1, 4, 240, 240)
