"""Learned and hand-designed optimizers obey the optax contract."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt

OPTIMIZERS = ["small_fc_lopt", "adam", "adamw", "sgd", "sgd_momentum", "rmsprop"]


def mixed_params():
    key = jax.random.key(1)
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "scalar": jnp.asarray(0.5, jnp.float32),
        "vector": jax.random.normal(k1, (7,), jnp.float32),
        "matrix": jax.random.normal(k2, (5, 3), jnp.float32),
        "conv": {"kernel": jax.random.normal(k3, (3, 3, 2, 4), jnp.float32)},
        "half": jnp.ones((4,), jnp.bfloat16),
    }


def gradients_of(params):
    return jax.tree.map(lambda p: (0.1 * p + 0.01).astype(p.dtype), params)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_update_keeps_structure_shapes_and_dtypes_under_jit(name):
    optimizer = lopt.get(name)
    tx = optimizer.transformation(optimizer.init(jax.random.key(0)), num_steps=100)
    params = mixed_params()
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(gradients_of(params), state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        assert u.shape == p.shape and u.dtype == p.dtype
        assert np.all(np.isfinite(np.asarray(u, np.float32)))
    updates2, _ = jax.jit(tx.update)(gradients_of(params), state, params)
    assert jax.tree.structure(updates2) == jax.tree.structure(params)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_composes_with_optax_chain_and_trains_a_quadratic(name):
    optimizer = lopt.get(name)
    theta = optimizer.init(jax.random.key(0))
    if name == "small_fc_lopt":
        theta = jax.tree.map(lambda x: x, theta)
        optimizer = lopt.SmallFcLOpt(step_mult=1e-2)
        theta = optimizer.init(jax.random.key(0))
    tx = optax.chain(optax.clip_by_global_norm(10.0), optimizer.transformation(theta))
    params = {"x": jnp.full((10,), 2.0)}

    def loss_fn(p):
        return jnp.sum(p["x"] ** 2)

    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = tx.update(grads, state, params, loss=loss)
        return optax.apply_updates(params, updates), state, loss

    first = float(loss_fn(params))
    for _ in range(50):
        params, state, _ = step(params, state)
    assert float(loss_fn(params)) != first
    assert np.isfinite(float(loss_fn(params)))


def test_small_fc_lopt_vmaps_over_meta_params():
    optimizer = lopt.SmallFcLOpt()
    thetas = jax.vmap(optimizer.init)(jax.random.split(jax.random.key(0), 3))
    params = mixed_params()
    grads = gradients_of(params)

    def one(theta):
        tx = optimizer.transformation(theta)
        updates, _ = tx.update(grads, tx.init(params), params)
        return updates

    batched = jax.jit(jax.vmap(one))(thetas)
    for i in range(3):
        single = one(jax.tree.map(lambda x: x[i], thetas))
        for b, s in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
            np.testing.assert_allclose(np.asarray(b[i], np.float32), np.asarray(s, np.float32), rtol=1e-5, atol=1e-9)
    first = jax.tree.leaves(jax.tree.map(lambda x: x[0], batched))
    second = jax.tree.leaves(jax.tree.map(lambda x: x[1], batched))
    assert any(not np.allclose(np.asarray(a, np.float32), np.asarray(b, np.float32)) for a, b in zip(first, second))


def test_small_fc_lopt_matches_the_small_fc_lopt_formula():
    """One update computed by hand from the published feature recipe."""
    optimizer = lopt.SmallFcLOpt(step_mult=0.01, exp_mult=0.1)
    theta = optimizer.init(jax.random.key(4))
    params = {"w": jnp.array([[0.3, -1.2], [2.0, 0.1]], jnp.float32)}
    grads = {"w": jnp.array([[0.5, -0.25], [1.5, -2.0]], jnp.float32)}
    tx = optimizer.transformation(theta)
    updates, state = tx.update(grads, tx.init(params), params)

    g, p = np.asarray(grads["w"]).ravel(), np.asarray(params["w"]).ravel()
    decays = np.array([0.1, 0.5, 0.9, 0.99, 0.999, 0.9999])
    momenta = (1 - decays)[None, :] * g[:, None]
    channels = np.concatenate([g[:, None], p[:, None], momenta], axis=1)
    channels = channels / np.sqrt(1e-5 + np.mean(channels**2, axis=0, keepdims=True))
    taus = np.array([1, 3, 10, 30, 100, 300, 1e3, 3e3, 1e4, 3e4, 1e5])
    time_features = np.tanh(0 / taus - 1)
    inputs = np.concatenate([channels, np.broadcast_to(time_features, (4, 11))], axis=1)
    w = {k: np.asarray(v, np.float64) for k, v in theta.items()}
    h = np.maximum(inputs @ w["w0"] + w["b0"], 0)
    h = np.maximum(h @ w["w1"] + w["b1"], 0)
    out = h @ w["w2"] + w["b2"]
    expected = -(out[:, 0] * np.exp(out[:, 1] * 0.1) * 0.01)
    np.testing.assert_allclose(np.asarray(updates["w"]).ravel(), expected, rtol=2e-4, atol=1e-8)
    np.testing.assert_allclose(np.asarray(state.momenta[0]).T, momenta, rtol=1e-3)
    assert int(state.iteration) == 1


def test_small_fc_lopt_blocked_and_chunked_updates_match_the_single_pass():
    """Blocks (lax.map over column ranges, per tensor for tensors of at least block_size parameters) and
    concurrent chunks only change the schedule, not the update."""
    key_p, key_g = jax.random.split(jax.random.key(7))
    params = {"w": jax.random.normal(key_p, (40, 50)), "b": jax.random.normal(key_p, (50,)), "s": jnp.float32(0.3)}
    grads = jax.tree.map(lambda p: 0.1 * p + 0.05, params)
    theta = lopt.SmallFcLOpt().init(jax.random.key(0))

    def two_updates(optimizer):
        tx = optimizer.transformation(theta)
        state = tx.init(params)
        _, state = jax.jit(tx.update)(grads, state, params)
        return jax.jit(tx.update)(grads, state, params)[0]

    reference = two_updates(lopt.SmallFcLOpt())
    variants = [lopt.SmallFcLOpt(block_size=512), lopt.SmallFcLOpt(block_size=400), lopt.SmallFcLOpt(block_size=40),
                lopt.SmallFcLOpt(concurrent_chunks=2), lopt.SmallFcLOpt(concurrent_chunks=4)]
    assert 2051 // lopt.small_fc_lopt.MIN_CHUNK_COLUMNS >= 4  # so concurrent_chunks=4 really makes four chunks
    for optimizer in variants:
        for got, want in zip(jax.tree.leaves(two_updates(optimizer)), jax.tree.leaves(reference)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-9)
    huge = jax.tree.map(lambda p: jnp.full_like(p, 1e20), params)
    tx_blocked, tx_single = lopt.SmallFcLOpt(block_size=40).transformation(theta), lopt.SmallFcLOpt().transformation(theta)
    blocked = tx_blocked.update(huge, tx_blocked.init(params), params)[0]
    single = tx_single.update(huge, tx_single.init(params), params)[0]
    for got, want in zip(jax.tree.leaves(blocked), jax.tree.leaves(single)):
        assert np.all(np.isfinite(np.asarray(got)))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="concurrent_chunks >= 1"):
        lopt.SmallFcLOpt(concurrent_chunks=0)


def test_small_fc_lopt_has_19_inputs_and_needs_params():
    optimizer = lopt.SmallFcLOpt()
    assert optimizer.init(jax.random.key(0))["w0"].shape == (19, 32)
    tx = optimizer.transformation(optimizer.init(jax.random.key(0)))
    params = {"x": jnp.ones(3)}
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params))


def test_unknown_optimizer_and_argument_give_clear_errors():
    with pytest.raises(lopt.LearnedOptimizerError, match="unknown optimizer 'nope'.*small_fc_lopt"):
        lopt.get("nope")
    with pytest.raises(lopt.LearnedOptimizerError, match="unknown argument.*hiden_sizes.*hidden_sizes"):
        lopt.get("small_fc_lopt", hiden_sizes=(4,))


@pytest.mark.parametrize("name", lopt.registered_names())
def test_every_optimizer_declares_its_constructor_arguments_as_frozen_fields(name):
    optimizer = lopt.get(name)
    fields = [f.name for f in dataclasses.fields(optimizer)]
    assert list(optimizer.config) == fields and optimizer.config == {f: getattr(optimizer, f) for f in fields}
    rebuilt = lopt.get(name, **optimizer.config)
    assert rebuilt == optimizer and hash(rebuilt) == hash(optimizer) and rebuilt is not optimizer
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(optimizer, fields[0], getattr(optimizer, fields[0]))


def test_fields_are_converted_to_their_declared_types_and_inherited():
    optimizer = lopt.get("small_fc_lopt", hidden_sizes=[8, 8], step_mult=1, momentum_decays=[0.5])
    assert optimizer.hidden_sizes == (8, 8) and isinstance(optimizer.step_mult, float)
    assert optimizer == lopt.SmallFcLOpt(hidden_sizes=(8, 8), step_mult=1.0, momentum_decays=(0.5,))
    assert lopt.get("small_fc_lopt", hidden_sizes=(4,)) != lopt.get("small_fc_lopt", hidden_sizes=(8,))
    assert set(lopt.AdamWCosine().config) == {"learning_rate", "b1", "b2", "eps", "warmup_fraction",
                                              "final_fraction", "weight_decay"}
    with pytest.raises(lopt.LearnedOptimizerError, match="adam_regex must be a string"):
        lopt.Celo2(adam_regex=3)
    with pytest.raises(TypeError, match="dataclass"):
        lopt.register("_test_undeclared")(type("Undeclared", (lopt.LearnedOptimizer,), {}))


def test_hand_designed_learning_rate_is_the_meta_parameter():
    adam = lopt.get("adam", learning_rate=0.05)
    theta = adam.init(None)
    np.testing.assert_allclose(np.exp(float(theta["log_learning_rate"])), 0.05, rtol=1e-6)
    params = {"x": jnp.ones(3)}
    tx = adam.transformation(theta)
    updates, _ = tx.update(params, tx.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["x"]), -0.05, rtol=1e-4)


def test_adam_cosine_warms_up_then_decays_to_its_final_fraction():
    adam_cosine = lopt.get("adam_cosine", learning_rate=0.1, warmup_fraction=0.1, final_fraction=0.01)
    tx = adam_cosine.transformation(adam_cosine.init(None), num_steps=100)
    params = {"x": jnp.zeros(2)}
    grads = {"x": jnp.ones(2)}
    state = tx.init(params)
    step_sizes = []
    for _ in range(100):
        updates, state = tx.update(grads, state, params)
        step_sizes.append(-float(updates["x"][0]))  # Adam's direction is 1 for a constant unit gradient
    step_sizes = np.asarray(step_sizes)
    np.testing.assert_allclose(step_sizes[0], 0.1 / 10, rtol=1e-3)
    np.testing.assert_allclose(step_sizes[9], 0.1, rtol=1e-3)
    assert np.all(np.diff(step_sizes[:10]) > 0) and np.all(np.diff(step_sizes[10:]) < 0)
    np.testing.assert_allclose(step_sizes[-1], 0.1 * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * 89 / 90))), rtol=1e-3)
    with pytest.raises(ValueError, match="needs the run length"):
        adam_cosine.transformation(adam_cosine.init(None))
    with pytest.raises(ValueError, match="warmup_fraction"):
        lopt.get("adam_cosine", warmup_fraction=1.5)


def test_small_fc_lopt_fraction_features_make_the_update_depend_on_the_run_length():
    params = mixed_params()
    grads = gradients_of(params)
    plain = lopt.SmallFcLOpt()
    with_fraction = lopt.SmallFcLOpt(fraction_features=True)
    theta = with_fraction.init(jax.random.key(3))
    assert theta["w0"].shape == (plain.num_inputs + 6, 32)

    def update_at(optimizer, meta_params, num_steps):
        tx = optimizer.transformation(meta_params, num_steps=num_steps)
        state = tx.init(params)._replace(iteration=jnp.asarray(50, jnp.int32))
        return tx.update(grads, state, params)[0]["matrix"]

    short, long = update_at(with_fraction, theta, 100), update_at(with_fraction, theta, 1000)
    assert not np.allclose(np.asarray(short), np.asarray(long))
    plain_theta = plain.init(jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(update_at(plain, plain_theta, 100)),
                                  np.asarray(update_at(plain, plain_theta, 1000)))
    rebuilt = lopt.get("small_fc_lopt", **with_fraction.config)
    assert rebuilt.fraction_features and rebuilt.num_inputs == with_fraction.num_inputs
