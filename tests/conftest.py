"""Shared pytest fixtures: the repository's optional real-data folder and small deterministic tasks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real datasets beside the checkout (../shared/data); tests that need them skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data folder {SHARED_DATA} not present")
    return SHARED_DATA


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests are dominated by XLA compile time; the backend's optimisation passes buy little at these sizes.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
