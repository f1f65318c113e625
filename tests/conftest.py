"""Shared test fixtures: paths to the project's shared real data and fixtures (never copied into the repo)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


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
