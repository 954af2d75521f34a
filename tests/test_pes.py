"""PES agrees with the exact meta-gradient of the full unroll, with and without restarts inside truncations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
import meta_train
from meta_train.pes import split_by_first_reset
from tests.helpers import FixedQuadraticFamily, MomentumLOpt


def exact_total_meta_loss(unroll, meta_params, num_truncations, trunc_length):
    """Sum over truncations of the mean meta-loss, differentiable end to end (one particle)."""
    particles = jax.tree.map(lambda x: x[None], meta_params)
    state = unroll.init_task(particles, jax.random.key(0))
    total = 0.0
    for k in range(num_truncations):
        state, result = unroll.truncation(particles, state, jax.random.key(k + 1), trunc_length)
        total = total + jnp.mean(result.meta_losses)
    return total


def summed_pes_gradient(unroll, estimator, meta_params, num_truncations, seed=0):
    state = estimator.init(unroll, meta_params, jax.random.key(seed))
    estimate = jax.jit(lambda s, k: estimator.estimate(unroll, meta_params, s, k))
    total = jax.tree.map(jnp.zeros_like, meta_params)
    restarts = 0
    for k in range(num_truncations):
        gradient, state, metrics = estimate(state, jax.random.key(1000 + k))
        total = jax.tree.map(jnp.add, total, gradient)
        restarts += int(metrics["num_restarts"])
    return total, restarts


def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def assert_close_direction_and_size(estimate, exact, min_cosine, max_relative_norm_error):
    est, ex = flat(estimate), flat(exact)
    cosine = est @ ex / (np.linalg.norm(est) * np.linalg.norm(ex))
    relative = abs(np.linalg.norm(est) - np.linalg.norm(ex)) / np.linalg.norm(ex)
    assert cosine > min_cosine, (cosine, est, ex)
    assert relative < max_relative_norm_error, (relative, np.linalg.norm(est), np.linalg.norm(ex))


@pytest.mark.parametrize(
    "horizon_length, trunc_length, num_truncations",
    [(30, 10, 3), (15, 10, 3)],  # the second puts a restart inside the second truncation
    ids=["restart_on_boundary", "restart_inside_truncation"],
)
def test_pes_matches_exact_meta_gradient(horizon_length, trunc_length, num_truncations):
    family = FixedQuadraticFamily()
    optimizer = MomentumLOpt()
    horizon = meta_train.ConstantHorizon(horizon_length, stagger=False)
    unroll = meta_train.TruncatedUnroll(family, optimizer, horizon)
    theta = optimizer.init(None)
    exact = jax.grad(exact_total_meta_loss, argnums=1)(unroll, theta, num_truncations, trunc_length)
    estimator = meta_train.PES(num_tasks=4096, trunc_length=trunc_length, std=0.01)
    estimate, restarts = summed_pes_gradient(unroll, estimator, theta, num_truncations)
    expected_restarts = 4096 * ((num_truncations * trunc_length) // horizon_length)
    assert restarts == expected_restarts
    assert_close_direction_and_size(estimate, exact, min_cosine=0.99, max_relative_norm_error=0.05)


def test_pes_matches_exact_meta_gradient_of_mlp_lopt():
    family = FixedQuadraticFamily()
    optimizer = lopt.SmallFcLOpt(hidden_sizes=(4,), step_mult=0.05)
    horizon = meta_train.ConstantHorizon(15, stagger=False)
    unroll = meta_train.TruncatedUnroll(family, optimizer, horizon)
    theta = optimizer.init(jax.random.key(3))
    exact = jax.grad(exact_total_meta_loss, argnums=1)(unroll, theta, 2, 10)
    estimator = meta_train.PES(num_tasks=8192, trunc_length=10, std=0.001)
    estimate, _ = summed_pes_gradient(unroll, estimator, theta, 2)
    assert_close_direction_and_size(estimate, exact, min_cosine=0.9, max_relative_norm_error=0.25)


def test_pes_without_accumulator_would_be_wrong():
    """Guards the test itself: dropping the persistent accumulator changes the estimate measurably."""
    family = FixedQuadraticFamily()
    optimizer = MomentumLOpt()
    horizon = meta_train.ConstantHorizon(30, stagger=False)
    unroll = meta_train.TruncatedUnroll(family, optimizer, horizon)
    theta = optimizer.init(None)
    exact = jax.grad(exact_total_meta_loss, argnums=1)(unroll, theta, 3, 10)
    estimator = meta_train.PES(num_tasks=4096, trunc_length=10, std=0.01)
    state = estimator.init(unroll, theta, jax.random.key(0))
    total = jax.tree.map(jnp.zeros_like, theta)
    for k in range(3):
        state = state._replace(accumulator=jax.tree.map(jnp.zeros_like, state.accumulator))
        gradient, state, _ = estimator.estimate(unroll, theta, state, jax.random.key(1000 + k))
        total = jax.tree.map(jnp.add, total, gradient)
    relative_error = np.linalg.norm(flat(total) - flat(exact)) / np.linalg.norm(flat(exact))
    assert relative_error > 0.1


def test_split_by_first_reset_assigns_reset_step_to_old_run():
    values = jnp.array([[1.0, 2.0, 4.0, 8.0], [1.0, 2.0, 4.0, 8.0], [1.0, 2.0, 4.0, 8.0]])
    resets = jnp.array([[False, False, False, False], [False, True, False, False], [True, False, True, False]])
    old, new = split_by_first_reset(values, resets)
    np.testing.assert_allclose(old, [15.0, 3.0, 1.0])
    np.testing.assert_allclose(new, [0.0, 12.0, 14.0])
