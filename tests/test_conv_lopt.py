"""conv_lopt: a learned convolution over conv kernels' gradient maps, small_fc_lopt for every other tensor."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
import tasks
from meta_train import build as build_lib
from lopt.conv_lopt import apply_spatial_operators, is_conv_kernel, spatial_features, spatial_operators

SMALL = dict(hidden_sizes=(8,), conv_channels=(4,), momentum_decays=(0.5, 0.9), time_scales=(1.0, 10.0))


def cnn_params(key=jax.random.key(1)):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "conv_0": {"w": jax.random.normal(k1, (3, 3, 2, 4)), "b": jnp.zeros((4,))},
        "conv_1": {"w": jax.random.normal(k2, (3, 3, 4, 4)).astype(jnp.bfloat16), "b": jnp.zeros((4,))},
        "head": {"w": jax.random.normal(k3, (4, 10)), "b": jnp.zeros((10,))},
    }


def gradients_of(params):
    return jax.tree.map(lambda p: (0.1 * p + 0.01 * jnp.arange(p.size).reshape(p.shape) / p.size).astype(p.dtype),
                        params)


def test_updates_keep_shapes_and_dtypes_and_the_state_splits_conv_kernels_from_the_rest():
    optimizer = lopt.get("conv_lopt", **SMALL)
    tx = optimizer.transformation(optimizer.init(jax.random.key(0)))
    params = cnn_params()
    state = tx.init(params)
    assert [m.shape for m in state.conv_momenta] == [(2, 72), (2, 144)]
    assert [m.shape for m in state.fallback.momenta] == [(2, 4), (2, 4), (2, 10), (2, 40)]
    updates, state = jax.jit(tx.update)(gradients_of(params), state, params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        assert u.shape == p.shape and u.dtype == p.dtype and np.all(np.isfinite(np.asarray(u, np.float32)))
    assert int(state.iteration) == 1 and int(state.fallback.iteration) == 1
    assert [is_conv_kernel(p) for p in jax.tree.leaves(params)] == [False, True, False, True, False, False]


def test_without_conv_kernels_it_is_small_fc_lopt_with_the_fallback_meta_params():
    optimizer = lopt.get("conv_lopt", **SMALL)
    reference = optimizer.fallback_optimizer
    theta = optimizer.init(jax.random.key(0))
    params = {"dense": jax.random.normal(jax.random.key(2), (5, 3)), "bias": jnp.ones((3,))}
    txs = [optimizer.transformation(theta), reference.transformation(theta["fallback"])]
    states = [tx.init(params) for tx in txs]
    for step in range(3):
        grads = jax.tree.map(lambda p: jnp.sin(p * (step + 1)), params)
        (conv_updates, states[0]), (fc_updates, states[1]) = [tx.update(grads, s, params) for tx, s in zip(txs, states)]
        for got, want in zip(jax.tree.leaves(conv_updates), jax.tree.leaves(fc_updates)):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def normalised(rows):
    return rows / np.sqrt(1e-5 + np.mean(rows ** 2, axis=1, keepdims=True))


def test_update_from_features_is_the_transformations_step_computed_from_its_definition():
    optimizer = lopt.get("conv_lopt", **SMALL)
    theta = optimizer.init(jax.random.key(3))
    # a 3x3 kernel of one channel pair is exactly one receptive-field patch
    params = {"w": jax.random.normal(jax.random.key(4), (3, 3, 1, 1)), "b": jnp.asarray([0.3, -1.0])}
    grads = {"w": jax.random.normal(jax.random.key(5), (3, 3, 1, 1)), "b": jnp.asarray([0.5, 2.0])}
    tx = optimizer.transformation(theta)
    updates, _ = tx.update(grads, tx.init(params), params)
    times = np.tanh(0.0 / np.asarray(SMALL["time_scales"]) - 1.0)

    def inputs(grad, param):  # rows: gradient, parameter, momenta after one step from zero; then time features
        grad, param = np.ravel(grad), np.ravel(param)
        rows = normalised(np.stack([grad, param] + [(1 - d) * grad for d in SMALL["momentum_decays"]]))
        return np.concatenate([rows, np.repeat(times[:, None], grad.size, axis=1)]).T

    features = {"conv": inputs(grads["w"], params["w"]).reshape(1, 3, 3, -1), "fallback": inputs(grads["b"], params["b"])}
    steps = optimizer.update_from_features(theta, jax.tree.map(jnp.asarray, features))
    assert steps["conv"].shape == (1, 3, 3) and steps["fallback"].shape == (2,)
    np.testing.assert_allclose(np.asarray(updates["w"]).reshape(1, 3, 3), -1e-3 * np.asarray(steps["conv"]),
                               rtol=2e-4, atol=1e-9)
    np.testing.assert_allclose(np.asarray(updates["b"]), -1e-3 * np.asarray(steps["fallback"]), rtol=2e-4)


def test_the_convolution_matrices_are_the_convolution_and_read_neighbouring_pixels_only():
    optimizer = lopt.get("conv_lopt", **{**SMALL, "conv_channels": (4, 3)})
    conv = optimizer.init(jax.random.key(0))["conv"]
    maps = jax.random.normal(jax.random.key(1), (optimizer.num_maps, 5, 5, 6))
    operators = spatial_operators(conv, 2, 5, 5)
    np.testing.assert_allclose(np.asarray(apply_spatial_operators(operators, maps.reshape(-1, 6))),
                               np.asarray(spatial_features(conv, maps, 2)).reshape(-1, 6), rtol=1e-5, atol=1e-5)
    first = np.asarray(operators[0][0]).reshape(4, 5, 5, optimizer.num_maps, 5, 5)  # [out, i, j, in, i', j']
    reads = np.abs(first).sum(axis=(0, 3)) > 0
    for i, j, i2, j2 in np.ndindex(*reads.shape):
        assert reads[i, j, i2, j2] == (abs(i - i2) <= 1 and abs(j - j2) <= 1)


def test_blocks_of_channel_pairs_give_the_updates_of_the_whole_kernel():
    params, grads = cnn_params(), gradients_of(cnn_params())
    updates = []
    for block_size in (27, 32768):  # three channel pairs of a 3x3 kernel per block, then all at once
        optimizer = lopt.get("conv_lopt", **SMALL, block_size=block_size)
        tx = optimizer.transformation(optimizer.init(jax.random.key(0)))
        updates.append(jax.jit(tx.update)(grads, tx.init(params), params)[0])
    for got, want in zip(*(jax.tree.leaves(u) for u in updates)):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=1e-5, atol=1e-10)


def test_the_meta_gradient_reaches_the_convolution_and_the_head():
    optimizer = lopt.get("conv_lopt", **SMALL, step_mult=0.1)
    params = cnn_params()
    grads = gradients_of(params)

    def loss_after_two_steps(theta):
        tx = optimizer.transformation(theta)
        p, state = params, tx.init(params)
        for _ in range(2):
            updates, state = tx.update(grads, state, p)
            p = optax.apply_updates(p, updates)
        return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(p))

    meta_grad = jax.jit(jax.grad(loss_after_two_steps))(optimizer.init(jax.random.key(0)))
    for part in ("conv", "head", "fallback"):
        assert float(optax.tree.norm(meta_grad[part])) > 0, part


def test_jit_of_vmap_over_tasks_matches_each_task_on_its_own():
    optimizer = lopt.get("conv_lopt", **SMALL)
    tx = optimizer.transformation(optimizer.init(jax.random.key(0)))
    batch = jax.vmap(cnn_params)(jax.random.split(jax.random.key(7), 3))
    batch = jax.tree.map(lambda p: p.astype(jnp.float32), batch)

    def step(params):
        return tx.update(gradients_of(params), tx.init(params), params)[0]

    together = jax.jit(jax.vmap(step))(batch)
    for k in range(3):
        alone = jax.jit(step)(jax.tree.map(lambda x: x[k], batch))
        for got, want in zip(jax.tree.leaves(together), jax.tree.leaves(alone)):
            np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want), rtol=1e-5, atol=1e-10)


def test_export_and_load_rebuild_the_same_updates(tmp_path):
    optimizer = lopt.get("conv_lopt", **SMALL, conv_kernel_size=5)
    theta = optimizer.init(jax.random.key(11))
    loaded = lopt.load(lopt.save(tmp_path / "conv.lopt", optimizer, theta))
    assert loaded.optimizer == optimizer and loaded.name == "conv_lopt"
    params = cnn_params()
    grads = gradients_of(params)
    want = optimizer.transformation(theta)
    got = loaded.transformation()
    for a, b in zip(jax.tree.leaves(want.update(grads, want.init(params), params)[0]),
                    jax.tree.leaves(got.update(grads, got.init(params), params)[0])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def gradient_descent_mlp(num_inputs, hidden):
    """MLP meta-params whose direction output is the normalised gradient (input 0) and magnitude 0."""
    w0 = np.zeros((num_inputs, hidden), np.float32)
    w0[0, :2] = [1.0, -1.0]
    w1 = np.zeros((hidden, 2), np.float32)
    w1[:2, 0] = [1.0, -1.0]
    return {"w0": w0, "b0": np.zeros(hidden, np.float32), "w1": w1, "b1": np.zeros(2, np.float32)}


def test_a_normalised_gradient_descent_rule_trains_a_cnn_on_digits():
    optimizer = lopt.get("conv_lopt", **SMALL, step_mult=0.05)
    theta = optimizer.init(jax.random.key(0))
    theta["head"] = gradient_descent_mlp(theta["head"]["w0"].shape[0], 8)
    theta["fallback"] = gradient_descent_mlp(theta["fallback"]["w0"].shape[0], 8)
    family = tasks.get("cnn_image", dataset="digits", channels=(4, 8), batch_size=32)
    task = family.task(family.sample(jax.random.key(0)))
    tx = optimizer.transformation(jax.tree.map(jnp.asarray, theta))
    batch = task.sample_batch(jax.random.key(1), "train")

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(task.loss)(params, None, batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    params = task.init(jax.random.key(2))
    state = tx.init(params)
    losses = []
    for _ in range(30):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]


def test_invalid_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="conv_channels must be one or more positive widths"):
        lopt.get("conv_lopt", conv_channels=())
    with pytest.raises(ValueError, match="conv_kernel_size must be a positive odd number, got 2"):
        lopt.get("conv_lopt", conv_kernel_size=2)
    with pytest.raises(ValueError, match="momentum_decays must lie in"):
        lopt.get("conv_lopt", momentum_decays=(1.5,))
    optimizer = lopt.get("conv_lopt", **SMALL)
    tx = optimizer.transformation(optimizer.init(jax.random.key(0)))
    with pytest.raises(ValueError, match="conv_lopt needs params"):
        tx.update(cnn_params(), tx.init(cnn_params()))


def test_the_cnn_config_builds_conv_lopt_and_small_fc_lopt_on_the_same_benchmark():
    path = Path(__file__).resolve().parents[1] / "configs" / "conv_lopt_cnn.py"
    conv_run = build_lib.build_from_file(str(path), ["--config.meta_train.parallel=none",
                                                     "--config.meta_train.host_devices=0"])
    assert isinstance(conv_run.learned_optimizer, lopt.ConvLOpt) and conv_run.family.name == "cnn_image"
    fc_run = build_lib.build_from_file(str(path), ["--config.optimizer.name=small_fc_lopt",
                                                   "--config.meta_train.parallel=none",
                                                   "--config.meta_train.host_devices=0"])
    assert fc_run.learned_optimizer == conv_run.learned_optimizer.fallback_optimizer
