"""Shared test fixtures: paths to the project's shared real data and fixtures (never copied into the repo)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked `gpu`, with the reason, where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU; torch {torch.__version__} sees none "
                                   "(run python -m infer.gpucheck on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"required shared test data missing: {path} (expected ../shared next to the repository)")
    return path


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    """`../shared/fixtures`: published BraSyn parameter names and a tiny published-format model."""
    return _require(SHARED / "fixtures")


@pytest.fixture(scope="session")
def brats_data() -> Path:
    """`../shared/data/brats`: two real BraTS glioma cases (240x240x155, 1 mm, LPS)."""
    return _require(SHARED / "data" / "brats")


from helpers import save_tiny_checkpoint  # noqa: E402 (appended with the fixtures below)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """A tiny random BraSyn generator for 32x32 slices, saved as a checkpoint folder."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "small", image_size=32)


@pytest.fixture(scope="session")
def brats18_data() -> Path:
    """`../shared/data/brats18`: 20 real BraTS 2018 cases in the 2018-2021 naming (enhancing tumour = 4)."""
    return _require(SHARED / "data" / "brats18")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--record-reference", action="store_true",
                     help="rewrite tests/data/reference-outputs.npz from the bundled weights (after retraining)")
