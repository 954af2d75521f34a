"""Meta-training phases: a mask limits which meta-params are perturbed and updated."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import lopt
import meta_train
from meta_train import build as build_lib
from meta_train import config as config_lib
from tests.helpers import FixedQuadraticFamily, TwoPhaseMomentumLOpt


def test_masked_phase_changes_only_its_meta_params():
    optimizer = TwoPhaseMomentumLOpt()
    trainer = meta_train.Trainer(
        FixedQuadraticFamily(), optimizer, meta_train.PES(num_tasks=8, trunc_length=5, std=0.05),
        meta_train.ConstantHorizon(20), optax.adam(0.05),
    )
    state = trainer.init(jax.random.key(0))
    start = jax.device_get(state.meta_params)
    for _ in range(3):
        state, _ = trainer.step(state, trainer.phase_mask(state.meta_params, "lr"))
    after_lr = jax.device_get(state.meta_params)
    assert after_lr["momentum_logit"] == start["momentum_logit"]
    assert after_lr["log_lr"] != start["log_lr"]
    for _ in range(3):
        state, _ = trainer.step(state, trainer.phase_mask(state.meta_params, "momentum"))
    after_momentum = jax.device_get(state.meta_params)
    assert after_momentum["log_lr"] == after_lr["log_lr"]
    assert after_momentum["momentum_logit"] != after_lr["momentum_logit"]


def test_phase_schedule_parsing():
    schedule = config_lib.parse_phases(("mlp:3", "scheduler:2"), 10)
    assert schedule == [("mlp", 0), ("scheduler", 3)]
    assert [config_lib.phase_at(schedule, s) for s in range(6)] == ["mlp"] * 3 + ["scheduler"] * 3
    assert config_lib.parse_phases((), 5) == [("all", 0)]
    with pytest.raises(config_lib.ConfigError, match="look like 'name:steps'"):
        config_lib.parse_phases(("mlp",), 10)
    with pytest.raises(config_lib.ConfigError, match="not before meta_train.num_steps"):
        config_lib.parse_phases(("mlp:10", "scheduler:5"), 10)


def test_unknown_phase_of_an_optimizer_is_a_config_error():
    config = config_lib.base_config()
    config.task.family = "quadratic"
    config.meta_train.phases = ("warmup:5",)
    with pytest.raises(config_lib.ConfigError, match="no meta-training phase 'warmup'"):
        build_lib.build(config)
    assert lopt.get("small_fc_lopt").trainable_mask({"w": np.zeros(2)}) == {"w": True}
