"""Shared pytest fixtures and markers."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: multi-process or end-to-end tests (still part of make test)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The released text shipped beside the repository (../shared/data)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}; clone the repo next to shared/")
    return SHARED_DATA
