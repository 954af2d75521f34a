"""Each task-family config in configs/ builds and runs two meta-steps (data folder needed).

The meta-batch is shrunk and the learned optimizer swapped for the one-parameter `adam`
baseline: compiling small_fc_lopt over each family's PES step costs 10-20 s of CPU apiece,
and that optimizer is exercised with a task family by tests/test_task_guide.py and test_run.py.
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from meta_train import build as build_lib
from meta_train import config as config_lib

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FAMILY_CONFIGS = {
    "cnn_cifar.py": "cnn_image",
    "transformer_shakespeare.py": "transformer_lm",
    "few_shot.py": "few_shot",
    "finance.py": "finance",
}


@pytest.mark.parametrize("filename", sorted(FAMILY_CONFIGS))
def test_family_config_runs_two_meta_steps(filename):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{filename} reads the data folder; none at {SHARED_DATA}")
    config = config_lib.load_config(REPO / "configs" / filename)
    assert config.task.family == FAMILY_CONFIGS[filename]
    config.data_dir = str(SHARED_DATA)
    mt = config.meta_train
    mt.num_tasks, mt.estimator.kwargs.trunc_length, mt.num_steps = 2, 5, 2
    mt.horizon = ml_collections.ConfigDict({"name": "constant", "kwargs": {"length": 10}})
    config.eval.enabled = False
    run = build_lib.build(config)
    assert run.learned_optimizer.name == config.optimizer.name
    config.optimizer.name, config.optimizer.kwargs = "adam", ml_collections.ConfigDict()
    run = build_lib.build(config)
    state = run.trainer.init(jax.random.key(0))
    for _ in range(2):
        state, metrics = run.trainer.step(state)
    assert int(state.step) == 2
    assert np.isfinite(float(metrics["meta_loss"])) and float(metrics["num_nonfinite"]) == 0
    if filename == "few_shot.py":
        assert run.trainer.meta_loss == "valid"
