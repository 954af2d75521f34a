"""Truncated backprop equals the exact meta-gradient when one truncation is a whole inner run, and trains."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
import meta_train
from meta_train.truncated_backprop import TruncatedBackprop
from tests.helpers import FixedQuadraticFamily, MomentumLOpt
from tests.test_pes import exact_total_meta_loss

FAST_COMPILE = {"xla_backend_optimization_level": 0}


def exact_value_and_gradient(unroll, theta, num_truncations, trunc_length):
    value_and_grad = jax.value_and_grad(exact_total_meta_loss, argnums=1)
    jitted = jax.jit(value_and_grad, static_argnums=(0, 2, 3), compiler_options=FAST_COMPILE)
    return jitted(unroll, theta, num_truncations, trunc_length)


def estimate_once(unroll, estimator, theta, seed=0):
    state = estimator.init(unroll, theta, jax.random.key(seed))
    estimate = jax.jit(lambda s, k: estimator.estimate(unroll, theta, s, k), compiler_options=FAST_COMPILE)
    return estimate(state, jax.random.key(seed + 1))


def test_one_truncation_per_run_gives_the_exact_gradient():
    family = FixedQuadraticFamily()
    optimizer = MomentumLOpt()
    unroll = meta_train.TruncatedUnroll(family, optimizer, meta_train.ConstantHorizon(12, stagger=False))
    theta = optimizer.init(None)
    exact_loss, exact = exact_value_and_gradient(unroll, theta, 1, 12)
    gradient, _, metrics = estimate_once(unroll, TruncatedBackprop(num_tasks=3, trunc_length=12), theta)
    for e, g in zip(jax.tree.leaves(exact), jax.tree.leaves(gradient)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=2e-4, atol=1e-7)
    assert set(metrics) == {
        "meta_loss", "inner_loss", "num_nonfinite", "num_restarts", "num_clipped", "median_normalized_loss"
    }
    assert int(metrics["num_restarts"]) == 3
    np.testing.assert_allclose(float(metrics["meta_loss"]), float(exact_loss), rtol=1e-6)


def test_second_truncation_sees_only_its_own_steps():
    """Over a 2-truncation run the estimate is the gradient with the carried state held constant, and is biased."""
    family = FixedQuadraticFamily()
    optimizer = MomentumLOpt()
    unroll = meta_train.TruncatedUnroll(family, optimizer, meta_train.ConstantHorizon(20, stagger=False))
    theta = optimizer.init(None)
    estimator = TruncatedBackprop(num_tasks=2, trunc_length=10)
    state = estimator.init(unroll, theta, jax.random.key(0))
    estimate = jax.jit(lambda s, k: estimator.estimate(unroll, theta, s, k), compiler_options=FAST_COMPILE)
    first, state, _ = estimate(state, jax.random.key(1))
    second, _, _ = estimate(state, jax.random.key(2))

    def second_truncation_loss(t):
        particles = jax.tree.map(lambda x: x[None], t)
        start = jax.tree.map(lambda x: x[0], state.tasks)
        return jnp.mean(unroll.truncation(particles, start, jax.random.key(0), 10)[1].meta_losses)

    expected = jax.jit(jax.grad(second_truncation_loss), compiler_options=FAST_COMPILE)(theta)
    _, exact = exact_value_and_gradient(unroll, theta, 2, 10)
    for s, e in zip(jax.tree.leaves(second), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(s), np.asarray(e), rtol=2e-4, atol=1e-7)
    total = np.concatenate([np.ravel(a + b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second))])
    exact_flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(exact)])
    assert np.linalg.norm(total - exact_flat) > 0.01 * np.linalg.norm(exact_flat)


def test_mask_zeroes_the_gradient_of_frozen_meta_params():
    family = FixedQuadraticFamily()
    optimizer = MomentumLOpt()
    unroll = meta_train.TruncatedUnroll(family, optimizer, meta_train.ConstantHorizon(10, stagger=False))
    theta = optimizer.init(None)
    estimator = TruncatedBackprop(num_tasks=2, trunc_length=10)
    state = estimator.init(unroll, theta, jax.random.key(0))
    mask = {"log_lr": jnp.ones(()), "momentum_logit": jnp.zeros(())}
    estimate = jax.jit(lambda s, k, m: estimator.estimate(unroll, theta, s, k, m), compiler_options=FAST_COMPILE)
    gradient, _, _ = estimate(state, jax.random.key(1), mask)
    assert float(gradient["momentum_logit"]) == 0.0 and float(gradient["log_lr"]) != 0.0


def test_trainer_with_truncated_backprop_raises_a_too_small_learning_rate():
    trainer = meta_train.Trainer(
        FixedQuadraticFamily(), lopt.get("learned_adam", learning_rate=1e-3),
        TruncatedBackprop(num_tasks=4, trunc_length=10), meta_train.ConstantHorizon(30), optax.adam(0.1),
    )
    state = trainer.init(jax.random.key(0))
    losses = []
    for _ in range(25):
        state, metrics = trainer.step(state)
        losses.append(float(metrics["meta_loss"]))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    assert float(state.meta_params["log_learning_rate"]) > np.log(1e-3) + 1.0


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        TruncatedBackprop(num_tasks=0)
    with pytest.raises(ValueError):
        TruncatedBackprop(task_map="pmap")
