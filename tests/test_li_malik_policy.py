"""li_malik_policy: starts as gradient descent, keeps the H-step history it is defined by, exports, runs under PES."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
import meta_train
import tasks
from meta_train.pes import PES
from meta_train.unroll import TruncatedUnroll

FAST_COMPILE = {"xla_backend_optimization_level": 0}


def quadratic(params):
    return 0.5 * jnp.sum(jnp.square(params["w"])) + jnp.sum(jnp.square(params["b"]))


def test_untrained_policy_is_gradient_descent_at_its_initial_rate():
    optimizer = lopt.get("li_malik_policy", init_learning_rate=0.05)
    tx = optimizer.transformation(optimizer.init(jax.random.key(0)))
    params = {"w": jnp.asarray([1.0, -2.0, 3.0]), "b": jnp.asarray(0.5)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(3):
        loss, grads = jax.value_and_grad(quadratic)(params)
        updates, state = update(grads, state, params, loss=loss)
        for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
            np.testing.assert_allclose(np.asarray(u), -0.05 * np.asarray(g), rtol=1e-5, atol=1e-7)
        params = optax.apply_updates(params, updates)


def test_history_holds_the_steps_taken_the_objective_changes_and_the_gradients():
    optimizer = lopt.get("li_malik_policy", history_length=3)
    tx = optimizer.transformation(optimizer.init(jax.random.key(0)))
    params = {"w": jnp.asarray([1.0, -2.0]), "b": jnp.asarray(0.0)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    visited, losses = [], []
    for k in range(4):
        loss, grads = jax.value_and_grad(quadratic)(params)
        visited.append(np.asarray(params["w"]))
        losses.append(float(loss))
        _, state = update(grads, state, params, loss=loss)
        params = {"w": params["w"] + jnp.asarray([0.1, -0.3]) * (k + 1), "b": params["b"]}  # not the policy's step
    # After 4 updates the 3 slots hold iterations 3, 2, 1 (newest first); iteration 0's entries were dropped.
    np.testing.assert_allclose(np.asarray(state.location_changes["w"]).T,
                               [visited[3] - visited[2], visited[2] - visited[1], visited[1] - visited[0]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.objective_changes),
                               [losses[3] - losses[2], losses[2] - losses[1], losses[1] - losses[0]], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(state.gradients["w"][:, 0]), visited[3], rtol=1e-6)
    assert int(state.iteration) == 4


def test_changes_with_the_history_after_training_and_keeps_dtypes():
    optimizer = lopt.get("li_malik_policy")
    theta = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(3), x.shape), optimizer.init(jax.random.key(0)))
    tx = optimizer.transformation(theta)
    params = {"w": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.zeros((3,), jnp.float32)}
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.3, p.dtype), params)
    state = tx.init(params)
    update = jax.jit(tx.update)
    first, state = update(grads, state, params, loss=jnp.float32(2.0))
    second, _ = update(grads, state, optax.apply_updates(params, first), loss=jnp.float32(1.0))
    for u, p in zip(jax.tree.leaves(second), jax.tree.leaves(params)):
        assert u.dtype == p.dtype and u.shape == p.shape and np.all(np.isfinite(np.asarray(u, np.float32)))
    assert not np.allclose(np.asarray(first["b"]), np.asarray(second["b"]))  # same gradient, different history


def test_missing_loss_or_params_is_a_one_line_error():
    optimizer = lopt.get("li_malik_policy")
    tx = optimizer.transformation(optimizer.init(jax.random.key(0)))
    params = {"w": jnp.ones(2)}
    for kwargs in ({"params": params}, {"loss": jnp.float32(1.0)}):
        with pytest.raises(ValueError, match="needs params and the loss: call update"):
            tx.update(params, tx.init(params), **kwargs)
    with pytest.raises(ValueError, match="history_length >= 1"):
        lopt.get("li_malik_policy", history_length=0)


def test_export_round_trip_gives_identical_updates(tmp_path):
    optimizer = lopt.get("li_malik_policy", history_length=5, hidden_size=8)
    theta = jax.tree.map(lambda x: x + 0.1, optimizer.init(jax.random.key(0)))
    loaded = lopt.load(lopt.save(tmp_path / "li_malik.lopt", optimizer, theta, provenance={"test": True}))
    assert loaded.name == "li_malik_policy" and loaded.optimizer == optimizer
    params = {"w": jnp.asarray([1.0, 2.0]), "b": jnp.asarray(0.5)}
    loss, grads = jax.value_and_grad(quadratic)(params)
    expected = optimizer.transformation(theta)
    got = loaded.transformation()
    np.testing.assert_array_equal(np.asarray(got.update(grads, got.init(params), params, loss=loss)[0]["w"]),
                                  np.asarray(expected.update(grads, expected.init(params), params, loss=loss)[0]["w"]))


def test_runs_under_pes_with_the_loss_from_the_unroll():
    family = tasks.get("robust_linear_regression", num_examples=8)
    optimizer = lopt.get("li_malik_policy", history_length=4, hidden_size=6)
    unroll = TruncatedUnroll(family, optimizer, meta_train.ConstantHorizon(6))
    estimator = PES(num_tasks=2, trunc_length=3, std=0.01)
    theta = optimizer.init(jax.random.key(0))
    state = estimator.init(unroll, theta, jax.random.key(1))
    estimate = jax.jit(lambda s, k: estimator.estimate(unroll, theta, s, k), compiler_options=FAST_COMPILE)
    gradient, state, metrics = estimate(state, jax.random.key(2))
    gradient, state, metrics = estimate(state, jax.random.key(3))
    assert jax.tree.structure(gradient) == jax.tree.structure(theta)
    leaves = [np.asarray(g) for g in jax.tree.leaves(gradient)]
    assert all(np.all(np.isfinite(g)) for g in leaves) and any(np.any(g != 0) for g in leaves)
    assert 0 < float(metrics["meta_loss"]) < 1
