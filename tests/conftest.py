"""Shared pytest fixtures: the repository's optional real-data folder, small deterministic tasks and a tiny export."""

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


@pytest.fixture(scope="module")
def export_file(tmp_path_factory) -> Path:
    """An untrained `mlp` learned optimizer (hidden (8,), step_mult 1e-2) saved as an export file."""
    # Imported here, not at the top, so that JAX starts only after XLA_FLAGS below is set.
    import jax

    import lopt

    optimizer = lopt.get("mlp", hidden_sizes=(8,), step_mult=1e-2)
    path = tmp_path_factory.mktemp("export") / "tiny.lopt"
    lopt.save(path, optimizer, optimizer.init(jax.random.key(0)), {"note": "untrained"})
    return path


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests are dominated by XLA compile time; the backend's optimisation passes buy little at these sizes.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
