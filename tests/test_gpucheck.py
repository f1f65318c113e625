"""The one-command GPU check, where this machine allows: a clear error without CUDA, and the `gpu` tests' outcomes
read back from pytest (here all skipped, with the reason)."""
import pytest
import torch

from infer import gpucheck


def test_without_cuda_the_check_stops_with_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpucheck.main(["--input", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: the GPU check needs a CUDA device; torch ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the gpu tests would run here, not be skipped")
def test_gpu_tests_are_run_and_read_back(brats_data, tmp_path):
    result = gpucheck.gpu_tests(brats_data, tmp_path)
    assert result["status"] == 0 and result["failed"] == [] and result["passed"] == []
    assert "test_bf16_against_fp32_with_the_full_size_generator" in result["skipped"]
    assert len(result["skipped"]) == 6
