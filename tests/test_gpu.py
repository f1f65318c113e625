"""GPU paths (marked `gpu`: skipped without CUDA, excluded from the default run; `python -m infer.gpucheck` runs
them): bf16 against float32, channels-last against contiguous, flash-attn against SDPA, torch.compile against
eager, the automatic batch size, and a one-process NCCL training step. Differences are in normalised units."""
import os
import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from infer.benchmark import random_generator
from infer.engine.slices import GPU_BATCH_LIMIT, VolumePredictor, resolve_settings
from infer.gpucheck import CASES_ENV
from conventions.tasks import BRASYN
from models import attention
from train.distributed import DistContext, pick_device
from train.volumetric import optimizer_step

from conftest import SHARED
from helpers import tiny_generator

pytestmark = pytest.mark.gpu
TARGET = "t2f"


@pytest.fixture(scope="module")
def case() -> dict[str, np.ndarray]:
    """The inputs of the first case of the gpucheck's folder (default: ../shared/data/brats), t2f left out."""
    folder = Path(os.environ.get(CASES_ENV) or SHARED / "data" / "brats")
    first = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    return {m: np.asarray(nib.load(first / f"{first.name}-{m}.nii.gz").dataobj, dtype=np.float32)
            for m in BRASYN.modalities if m != TARGET}


def synthesise(model, volumes, **options) -> tuple[np.ndarray, VolumePredictor]:
    """The sagittal synthesis of `volumes` on the GPU (float32 output units) and its predictor."""
    predictor = VolumePredictor(model, resolve_settings(BRASYN, model, ("sagittal",)), device="cuda", **options)
    return predictor.predict(volumes, TARGET), predictor


def difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and max absolute difference, normalised units."""
    d = np.abs(a - b) / BRASYN.normalization[TARGET].std
    return float(d.mean()), float(d.max())


def test_bf16_against_fp32_with_the_full_size_generator(case):
    model = random_generator("full")
    fp32, _ = synthesise(model, case, precision="fp32")
    bf16, predictor = synthesise(model, case)
    assert predictor.precision == "bf16" and bf16.dtype == np.float32 and np.isfinite(bf16).all()
    mean, largest = difference(bf16, fp32)
    assert mean < 0.02 and largest < 0.5, (mean, largest)


def test_channels_last_against_contiguous(case):
    model = random_generator("small")
    channels_last, predictor = synthesise(model, case, precision="fp32")
    assert predictor.memory_format == torch.channels_last
    predictor.memory_format = torch.contiguous_format
    contiguous = predictor.predict(case, TARGET)
    mean, largest = difference(channels_last, contiguous)
    assert mean < 1e-3 and largest < 0.05, (mean, largest)


def test_flash_attn_against_sdpa(case, monkeypatch):
    pytest.importorskip("flash_attn")
    model = random_generator("full")
    flash, _ = synthesise(model, case, precision="bf16")
    monkeypatch.setattr(attention, "flash_attn_func", None)
    sdpa, _ = synthesise(model, case, precision="bf16")
    mean, largest = difference(flash, sdpa)
    assert mean < 0.01 and largest < 0.5, (mean, largest)


def test_compile_against_eager(case):
    model = random_generator("small")
    eager, _ = synthesise(model, case)
    compiled, _ = synthesise(model, case, compile=True)
    mean, largest = difference(compiled, eager)
    assert mean < 0.01 and largest < 0.5, (mean, largest)


def test_automatic_batch_size_fills_the_gpu_and_runs(case):
    model = random_generator("full")
    out, predictor = synthesise(model, case)
    assert 1 <= predictor.batch_size <= GPU_BATCH_LIMIT and np.isfinite(out).all()
    assert predictor.batch_size == GPU_BATCH_LIMIT or torch.cuda.get_device_properties(0).total_memory < 40 * 2**30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_one_process_nccl_training_step(monkeypatch):
    if not dist.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    ctx = DistContext(rank=0, world_size=1, device=pick_device("cuda", 0))
    dist.init_process_group("nccl", rank=ctx.rank, world_size=ctx.world_size)
    try:
        torch.manual_seed(0)
        model = DistributedDataParallel(tiny_generator(image_size=64).to(ctx.device), device_ids=[ctx.device])
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.randn(4, 4, 64, 64, device=ctx.device)
        available = torch.tensor([[True, False, True, True]] * 4, device=ctx.device)
        target = torch.full((4,), 1, device=ctx.device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = (model(x, available, target) - x[:, 1:2]).abs().mean()
        optimizer_step(model, optimizer, loss, lr=1e-3, grad_clip=1.0)
        total = loss.detach().float().reshape(1)
        dist.all_reduce(total)
        assert torch.isfinite(total).all() and torch.allclose(total, loss.detach().float())
        assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    finally:
        dist.destroy_process_group()
