"""Losses clipped at max_meta_loss are counted, and a meta-step left without signal by them says so once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import meta_train
from meta_train.clipped_losses import clipped_loss_warning
from tasks.base import Task, TaskFamily
from tests.helpers import FixedQuadraticFamily, MomentumLOpt


class UnnormalisedTask(Task):
    """A 2-D quadratic whose loss starts at 24.5 and has no normalizer, as a user might first write it."""

    name = "unnormalised"

    def init(self, key):
        del key
        return {"x": jnp.zeros(2)}

    def loss(self, params, key, batch):
        del key, batch
        return jnp.sum((params["x"] - 3.5) ** 2)


class UnnormalisedFamily(TaskFamily):
    """Every sample is the same UnnormalisedTask."""

    name = "unnormalised"

    def sample(self, key):
        del key
        return {"unused": jnp.zeros((), jnp.float32)}

    def task(self, cfg):
        return UnnormalisedTask()


def trainer(family, **kwargs):
    return meta_train.Trainer(
        family, MomentumLOpt(learning_rate=1e-3), meta_train.PES(num_tasks=2, trunc_length=5, std=0.05),
        meta_train.ConstantHorizon(20), optax.adam(0.1), **kwargs,
    )


def run_steps(trainer_, num_steps):
    state = trainer_.init(jax.random.key(0))
    first = jax.tree.map(np.asarray, state.meta_params)
    all_metrics = []
    for _ in range(num_steps):
        state, metrics = trainer_.step(state)
        all_metrics.append({k: float(v) for k, v in metrics.items()})
    return first, jax.tree.map(np.asarray, state.meta_params), all_metrics


def test_unnormalised_task_with_default_clip_is_counted_and_warned_about_once(capsys):
    first, last, metrics = run_steps(trainer(UnnormalisedFamily()), num_steps=6)
    losses_per_step = 2 * 2 * 5
    assert [m["num_clipped"] for m in metrics] == [losses_per_step] * 6
    assert all(20 < m["median_normalized_loss"] < 25 for m in metrics)
    # Every loss clipped at both particles: the meta-gradient is exactly zero.
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(last)):
        np.testing.assert_array_equal(a, b)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert "max_meta_loss=10" in lines[0] and "family unnormalised" in lines[0] and "100%" in lines[0]
    assert "meta_train.max_meta_loss" in lines[0] and "normalizer" in lines[0]


def test_unnormalised_task_learns_with_a_raised_clip_and_nothing_is_printed(capsys):
    first, last, metrics = run_steps(trainer(UnnormalisedFamily(), max_meta_loss=1e3), num_steps=6)
    assert all(m["num_clipped"] == 0 for m in metrics)
    assert float(last["log_lr"]) > float(first["log_lr"]) + 0.3
    assert capsys.readouterr().err == ""


def test_mixture_warning_names_the_clipped_family(capsys):
    mixture = trainer([FixedQuadraticFamily(), UnnormalisedFamily()])
    _, _, metrics = run_steps(mixture, num_steps=2)
    assert metrics[0]["num_clipped/fixed_quadratic"] == 0 and metrics[0]["num_clipped/unnormalised"] == 20
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "family unnormalised" in lines[0]


def test_warning_threshold_is_more_than_half_of_the_losses():
    def warning(num_clipped):
        return clipped_loss_warning({"num_clipped": num_clipped, "median_normalized_loss": 12.0}, ["f"], 20, 10.0, 7)

    assert warning(10) is None
    message = warning(11)
    assert message.startswith("warning: at meta-step 7, 55% of family f's") and "above 120 " in message
    assert "\n" not in message
