"""Which precision a run resolves to, from the device and the CPU's capabilities (mocked)."""
import pytest
import torch

from infer.engine import precision
from infer.engine.precision import PRECISIONS, cpu_has_native_bf16, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def capabilities(monkeypatch, **answers):
    """torch.cpu's bf16 checks answering `answers` (name -> bool); a check not named is absent."""
    for name in precision.CPU_BF16_CHECKS:
        if name in answers:
            monkeypatch.setattr(torch.cpu, name, lambda value=answers[name]: value, raising=False)
        else:
            monkeypatch.delattr(torch.cpu, name, raising=False)


@pytest.mark.parametrize("answers, native", [
    ({"_is_avx512_bf16_supported": True, "_is_amx_tile_supported": False}, True),
    ({"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": True}, True),
    ({"_is_avx512_bf16_supported": False, "_is_amx_tile_supported": False}, False),
    ({"_is_avx512_bf16_supported": False}, False),  # an older torch without the AMX check
    ({}, False),
])
def test_native_bf16_from_the_cpu_capabilities(monkeypatch, answers, native):
    capabilities(monkeypatch, **answers)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)  # not asked
    assert cpu_has_native_bf16() is native


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_on_cuda_and_on_native_cpus(monkeypatch, native):
    capabilities(monkeypatch, _is_avx512_bf16_supported=native, _is_amx_tile_supported=False)
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    assert resolve_precision("auto", CUDA) == "bf16"
    assert resolve_precision("auto", torch.device("meta")) == "fp32"
    for device in (CPU, CUDA):
        assert resolve_precision("fp32", device) == "fp32" and resolve_precision("bf16", device) == "bf16"


def test_unknown_precision_is_refused():
    assert PRECISIONS == ("auto", "fp32", "bf16")
    with pytest.raises(ValueError, match="^precision must be one of auto, fp32, bf16, got 'fp16'$"):
        resolve_precision("fp16", CPU)
