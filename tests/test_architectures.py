"""Every learned-optimizer architecture obeys the optax contract, survives extreme gradients, exports, and meta-learns."""

from __future__ import annotations

import functools
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from meta_train import build as build_lib
from meta_train import config as config_lib

NAMES = ["small_fc_lopt", "adafac_mlp", "l2l_lstm", "hyper_lstm", "attention", "learned_adam", "adam_multiplier", "celo"]
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
FAST_COMPILE = {"xla_backend_optimization_level": 0}
GRADIENT_SCALES = {"typical": None, "zero": 0.0, "tiny": 1e-20, "huge": 1e20}


def config_path(name: str, family: str) -> Path:
    if name == "celo" and family == "mlp":
        return CONFIG_DIR / "celo.py"
    if name == "small_fc_lopt" and family == "mlp":
        return CONFIG_DIR / "quickstart.py"
    return CONFIG_DIR / f"{name}_{family}.py"


def mixed_params():
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    return {
        "scalar": jnp.asarray(0.5, jnp.float32),
        "vector": jax.random.normal(k1, (7,), jnp.float32),
        "matrix": jax.random.normal(k2, (5, 3), jnp.float32),
        "conv": {"kernel": jax.random.normal(k3, (3, 3, 2, 4), jnp.float32)},
        "half": jnp.ones((4,), jnp.bfloat16),
    }


def gradients(params, scale):
    """Gradients like `params`: 0.1 p + 0.01 when `scale` is None, else +-scale alternating (built in numpy)."""
    def one(p):
        p32 = np.asarray(p, np.float32)
        if scale is None:
            value = 0.1 * p32 + 0.01
        else:
            value = scale * np.where(np.arange(p32.size).reshape(p32.shape) % 2 == 0, 1.0, -1.0)
        return jnp.asarray(value.astype(np.float32), p.dtype)

    return jax.tree.map(one, params)


def perturbed(theta, seed, scale=0.1):
    """Meta-params moved off their initial values (zero read-outs become non-zero)."""
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def init_and_updates(optimizer, theta, grads, params, loss, num_steps, num_updates=1):
    """Runs init and `num_updates` updates (only the first gets a loss) and returns every state and update."""
    tx = optimizer.transformation(theta, num_steps=num_steps)
    states, updates = [tx.init(params)], []
    for k in range(num_updates):
        new_updates, state = tx.update(grads, states[-1], params, **({"loss": loss} if k == 0 else {}))
        states.append(state)
        updates.append(new_updates)
    return states, updates


@functools.lru_cache(maxsize=None)
def one_update(name):
    """Optimizer `name` and a cached, cheaply compiled `init_and_updates` (one update) for it."""
    optimizer = lopt.get(name)
    return optimizer, jax.jit(functools.partial(init_and_updates, optimizer), compiler_options=FAST_COMPILE)


def assert_like_params(updates, params):
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        assert u.shape == p.shape and u.dtype == p.dtype, (u.shape, u.dtype, p.shape, p.dtype)
        assert np.all(np.isfinite(np.asarray(u, np.float32)))


@pytest.mark.parametrize("name", NAMES)
def test_contract_structure_dtypes_and_finite_for_extreme_gradients(name):
    optimizer, run = one_update(name)
    theta = perturbed(optimizer.init(jax.random.key(0)), seed=1)
    chex.assert_trees_all_equal_dtypes(theta, jax.tree.map(lambda x: jnp.zeros_like(x, jnp.float32), theta))
    params = mixed_params()
    for case, scale in GRADIENT_SCALES.items():
        (state0, state1), (updates,) = run(theta, gradients(params, scale), params, jnp.float32(2.0), jnp.int32(100))
        assert_like_params(updates, params)
        chex.assert_trees_all_equal_shapes_and_dtypes(state0, state1)
        if case == "typical":
            assert any(np.any(np.asarray(u, np.float32) != 0) for u in jax.tree.leaves(updates)), case


@pytest.mark.parametrize("name", NAMES)
def test_vmaps_over_meta_params_and_num_steps_without_a_loss(name):
    optimizer = lopt.get(name)
    thetas = [perturbed(optimizer.init(jax.random.key(0)), seed=s) for s in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *thetas)
    num_steps = jnp.array([50, 100, 2000], jnp.int32)
    params = {"matrix": mixed_params()["matrix"]}
    grads = gradients(params, None)

    def first_update(theta, steps):
        tx = optimizer.transformation(theta, num_steps=steps)
        return tx.update(grads, tx.init(params), params)[0]["matrix"]

    batched = jax.jit(jax.vmap(first_update), compiler_options=FAST_COMPILE)(stacked, num_steps)
    single = jax.jit(first_update, compiler_options=FAST_COMPILE)
    for i, (theta, steps) in enumerate(zip(thetas, num_steps)):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(single(theta, steps)), rtol=1e-4, atol=1e-8)
    assert np.all(np.isfinite(np.asarray(batched)))
    assert not np.allclose(np.asarray(batched[0]), np.asarray(batched[1]))


def as_json_like(value):
    if isinstance(value, dict):
        return {k: as_json_like(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_json_like(v) for v in value]
    return value


@pytest.mark.parametrize("name", NAMES)
def test_export_round_trip_gives_identical_updates(name, tmp_path):
    """The file rebuilds the same optimizer (class and arguments) and meta-params, hence identical updates."""
    optimizer, run = one_update(name)
    theta = perturbed(optimizer.init(jax.random.key(0)), seed=2)
    loaded = lopt.load(lopt.save(tmp_path / f"{name}.lopt", optimizer, theta, provenance={"test": True}))
    assert loaded.name == name and type(loaded.optimizer) is type(optimizer)
    assert as_json_like(loaded.optimizer.config) == as_json_like(optimizer.config)
    params = mixed_params()
    grads, loss, num_steps = gradients(params, None), jnp.float32(1.5), jnp.int32(300)
    expected = run(theta, grads, params, loss, num_steps)[1]
    got = run(loaded.meta_params, grads, params, loss, num_steps)[1]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


class _CompiledMetaTraining:
    """The config's estimator, unroll and meta-optimizer as two cheaply compiled functions (init, step with a mask)."""

    def __init__(self, run: config_lib.Run):
        trainer = run.trainer
        unroll = trainer.unroll(trainer.family)
        estimator, meta_optimizer = trainer.estimator, trainer.meta_optimizer
        self.optimizer = run.learned_optimizer

        def init(theta, key):
            return estimator.init(unroll, theta, key), meta_optimizer.init(theta)

        def step(theta, meta_opt_state, estimator_state, key, mask):
            gradient, estimator_state, metrics = estimator.estimate(unroll, theta, estimator_state, key, mask)
            gradient = jax.tree.map(lambda g, m: g * m, gradient, mask)
            updates, meta_opt_state = meta_optimizer.update(gradient, meta_opt_state, theta)
            theta = optax.apply_updates(theta, jax.tree.map(lambda u, m: u * m, updates, mask))
            return theta, meta_opt_state, estimator_state, metrics["meta_loss"]

        self.init = jax.jit(init, compiler_options=FAST_COMPILE)
        self.step = jax.jit(step, compiler_options=FAST_COMPILE)

    def train(self, num_steps: int, seed: int = 0, phase: str = "all"):
        """Meta-trains from the optimizer's init; returns (initial theta, final theta, meta-losses)."""
        theta_key, init_key, step_key = jax.random.split(jax.random.key(seed), 3)
        initial = theta = self.optimizer.init(theta_key)
        trainable = self.optimizer.trainable_mask(theta, phase)
        mask = jax.tree.map(lambda t, x: jnp.full(jnp.shape(x), t, jnp.float32), trainable, theta)
        estimator_state, meta_opt_state = self.init(theta, init_key)
        losses = []
        for key in jax.random.split(step_key, num_steps):
            theta, meta_opt_state, estimator_state, meta_loss = self.step(theta, meta_opt_state, estimator_state, key, mask)
            losses.append(float(meta_loss))
        return initial, theta, np.asarray(losses)

    def meta_loss(self, theta, seed: int, num_truncations: int) -> float:
        """Mean meta-loss of `theta` over `num_truncations` from fresh inner runs; same tasks and keys for a given seed."""
        frozen = jax.tree.map(jnp.zeros_like, theta)
        estimator_state, meta_opt_state = self.init(theta, jax.random.key(seed))
        losses = []
        for key in jax.random.split(jax.random.key(seed + 1), num_truncations):
            _, meta_opt_state, estimator_state, meta_loss = self.step(theta, meta_opt_state, estimator_state, key, frozen)
            losses.append(float(meta_loss))
        return float(np.mean(losses))


def quadratic_test_config(name: str):
    """The architecture's quadratic config, shrunk to the test's small, fixed setting."""
    config = config_lib.load_config(config_path(name, "quadratic"))
    config.task.kwargs.dim = 8
    config.meta_train.num_tasks = 8
    config.meta_train.estimator.kwargs.trunc_length = 10
    config.meta_train.horizon.kwargs.length = 50
    config.meta_train.meta_learning_rate = max(config.meta_train.meta_learning_rate, 1e-2)
    config.meta_train.phases = ()
    return config


@functools.lru_cache(maxsize=None)
def quadratic_meta_training(name: str) -> _CompiledMetaTraining:
    run = build_lib.build(quadratic_test_config(name))
    assert run.learned_optimizer.name == name
    return _CompiledMetaTraining(run)


@pytest.mark.parametrize("name", NAMES)
def test_pes_steps_from_the_quadratic_config_lower_the_meta_loss(name):
    """40 PES steps; the meta-loss before and after is measured on the same 8 tasks, keys and perturbations (paired)."""
    training = quadratic_meta_training(name)
    initial, trained, losses = training.train(num_steps=40)
    assert np.all(np.isfinite(losses))
    before = training.meta_loss(initial, seed=123, num_truncations=5)
    after = training.meta_loss(trained, seed=123, num_truncations=5)
    assert after < 0.97 * before, (before, after)


# Every architecture runs PES steps on quadratics above; on the MLP family one representative
# runs a meta-step (each costs ~20 s of compilation on the 2-core CI machine) and all build.
MLP_STEP_NAMES = ("l2l_lstm",)


@pytest.mark.parametrize("name", NAMES)
def test_mlp_config_builds_and_runs_one_meta_step(name):
    """Every MLP-family config builds; the representative runs a meta-step."""
    config = config_lib.load_config(config_path(name, "mlp"))
    config.meta_train.num_tasks = 2
    config.meta_train.estimator.kwargs.trunc_length = 2
    run = build_lib.build(config)
    assert run.learned_optimizer.name == name and run.family.name == "mlp_image"
    if name in MLP_STEP_NAMES:
        _, _, losses = _CompiledMetaTraining(run).train(num_steps=1)
        assert np.isfinite(losses[0])


def test_celo_phases_train_only_their_part():
    config = config_lib.load_config(CONFIG_DIR / "celo.py")
    assert [p.split(":")[0] for p in config.meta_train.phases] == ["mlp", "scheduler"]
    training = quadratic_meta_training("celo")
    for phase, frozen, trained in (("mlp", "scheduler", "mlp"), ("scheduler", "mlp", "scheduler")):
        initial, theta, _ = training.train(num_steps=2, phase=phase)
        for a, b in zip(jax.tree.leaves(theta[frozen]), jax.tree.leaves(initial[frozen])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(theta[trained]), jax.tree.leaves(initial[trained])))
    with pytest.raises(lopt.LearnedOptimizerError):
        training.optimizer.trainable_mask(initial, "everything")


def test_decay_offsets_of_zero_give_the_default_decays():
    from lopt import adafactor_features as adafac

    np.testing.assert_allclose(adafac.learned_decays((0.9, 0.99, 0.999), jnp.zeros(3)), [0.9, 0.99, 0.999], rtol=1e-6)
    assert lopt.AdafacMLPLOpt().num_inputs == 39


def test_learned_adam_at_init_matches_optax_adam():
    optimizer = lopt.get("learned_adam", learning_rate=3e-3)
    tx, reference = optimizer.transformation(optimizer.init(None)), optax.adam(3e-3)
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    state, ref_state = tx.init(params), reference.init(params)
    for k in range(3):
        grads = {"w": jnp.cos(params["w"] * (k + 1))}
        updates, state = tx.update(grads, state, params)
        expected, ref_state = reference.update(grads, ref_state, params)
        np.testing.assert_allclose(updates["w"], expected["w"], rtol=1e-5, atol=1e-9)
        params = optax.apply_updates(params, updates)


def test_l2l_preprocessing_matches_the_paper():
    from lopt.l2l_lstm import preprocess_gradient

    g = jnp.array([1.0, -1e-2, 1e-6, -1e-6, 0.0])
    expected = [[0.0, 1.0], [np.log(1e-2) / 10, -1.0], [-1.0, 1e-6 * np.exp(10)], [-1.0, -1e-6 * np.exp(10)], [-1.0, 0.0]]
    np.testing.assert_allclose(preprocess_gradient(g), expected, rtol=1e-5)


@pytest.mark.parametrize("shape", [
    (2, 3, 2735),  # 3-d: whole features, two full column blocks of the MLP and a partial one
    (300, 100),    # matrix: features per block of 81 rows, a partial block of 57 rows
    (3, 8199),     # matrix wider than a block: one row per block
])
def test_adafactor_mlp_steps_match_the_normalised_feature_mlp_across_blocks(shape):
    """Channel-major features, normalisation folded into the first layer and blocks leave the steps unchanged."""
    from lopt import adafactor_features as adafac
    from lopt.adafac_mlp import COLUMN_BLOCK, adafactor_mlp_steps
    from lopt.small_fc_lopt import init_mlp
    from lopt.normalization import stable_second_moment_normalize

    assert COLUMN_BLOCK == 8192  # the shapes above are chosen around it
    keys = jax.random.split(jax.random.key(3), 4)
    p = jax.random.normal(keys[0], shape)
    decays = adafac.Decays(*(jnp.asarray(d, jnp.float32) for d in (
        adafac.MOMENTUM_DECAYS, adafac.RMS_DECAYS, adafac.ADAFACTOR_DECAYS)))
    acc = adafac.init_accumulators({"p": p}, 3, 1, 3)
    for k in keys[1:]:
        acc = adafac.update_accumulators(acc, {"p": jax.random.normal(k, p.shape) * 3.0}, decays)
    g = jax.random.normal(keys[3], p.shape)
    args = (g, p, acc.momenta["p"], acc.rms["p"], acc.factored["p"])
    mlp = perturbed(init_mlp(jax.random.key(5), (28, 16, 16, 2)), seed=6)
    bias = mlp["b0"] + 0.3

    got = jax.jit(lambda *a: adafactor_mlp_steps(mlp, bias, 3, 1e-2, 0.1, *a))(*args)
    channels = stable_second_moment_normalize(jnp.moveaxis(adafac.tensor_features(*args), 0, -1))
    hidden = jax.nn.relu(channels @ mlp["w0"] + bias)
    hidden = jax.nn.relu(hidden @ mlp["w1"] + mlp["b1"])
    out = hidden @ mlp["w2"] + mlp["b2"]
    want = out[..., 0] * jnp.exp(out[..., 1] * 0.1) * 1e-2
    assert got.shape == p.shape and p.size > 2 * COLUMN_BLOCK
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=1e-7)
    huge = adafac.update_accumulators(acc, {"p": jnp.full(p.shape, 1e20)}, decays)
    extreme = jax.jit(lambda *a: adafactor_mlp_steps(mlp, bias, 3, 1e-2, 0.1, *a))(
        jnp.full(p.shape, -1e20), p, huge.momenta["p"], huge.rms["p"], huge.factored["p"])
    assert np.all(np.isfinite(np.asarray(extreme)))


def test_adafactor_tensor_features_match_numpy_formulas():
    """The 28 channel-major features of a matrix after two updates, recomputed from the Adafactor definitions."""
    from lopt import adafactor_features as adafac

    rng = np.random.default_rng(0)
    p = rng.normal(size=(4, 5)).astype(np.float32)
    grads = [rng.normal(size=(4, 5)).astype(np.float32) for _ in range(2)]
    dm, dv, df = np.array(adafac.MOMENTUM_DECAYS), np.array(adafac.RMS_DECAYS), np.array(adafac.ADAFACTOR_DECAYS)
    decays = adafac.Decays(*(jnp.asarray(d, jnp.float32) for d in (dm, dv, df)))
    acc = adafac.init_accumulators({"p": jnp.asarray(p)}, 3, 1, 3)
    m, v = np.zeros((3, 4, 5)), np.zeros((1, 4, 5))
    row, col = np.zeros((3, 4)), np.zeros((3, 5))
    for g in grads:
        acc = adafac.update_accumulators(acc, {"p": jnp.asarray(g)}, decays)
        m = dm[:, None, None] * m + (1 - dm[:, None, None]) * g
        v = dv[:, None, None] * v + (1 - dv[:, None, None]) * g**2
        sq = g.astype(np.float64) ** 2 + adafac.EPSILON
        row = df[:, None] * row + (1 - df[:, None]) * sq.mean(1)
        col = df[:, None] * col + (1 - df[:, None]) * sq.mean(0)
    g = grads[-1]
    got = np.asarray(adafac.tensor_features(jnp.asarray(g), jnp.asarray(p), acc.momenta["p"], acc.rms["p"], acc.factored["p"]))
    factored = row[:, :, None] * (col / row.mean(1, keepdims=True))[:, None, :]
    rsqrt_v = 1 / np.sqrt(v + adafac.EPSILON)
    expected = np.concatenate([
        g[None], p[None], m, v, (m[:, None] * rsqrt_v[None]).reshape(3, 4, 5), rsqrt_v, g / np.sqrt(factored),
        np.broadcast_to(1 / np.sqrt(row)[:, :, None], (3, 4, 5)), np.broadcast_to(1 / np.sqrt(col)[:, None, :], (3, 4, 5)),
        (m[:, None] / np.sqrt(factored)[None]).reshape(9, 4, 5),
    ])
    assert got.shape == (28, 4, 5)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-6)
