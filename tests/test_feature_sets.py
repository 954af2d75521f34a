"""Named input features (lopt.feature_sets), the optimizer composing them (feature_lopt), the extra update
arguments loops supply (lopt.update_arguments) and the finance family's domain vector."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
import meta_train
import tasks
from lopt import feature_sets, update_arguments
from meta_train import build as build_lib
from meta_train import config as config_lib
from meta_train.evaluation import curves
from tests.helpers import FixedQuadraticFamily

REPO = Path(__file__).resolve().parents[1]
ALL_FEATURES = ("gradient", "parameter", "momenta", "time", "fraction", "loss_progress", "direction", "log_abs",
                "variance", "hessian_diag", "secant", "domain")
NUM_STEPS = 6
SIZE = 7


def settings(**kwargs) -> lopt.FeatureLOpt:
    return lopt.get("feature_lopt", features=ALL_FEATURES, domain_width=3, momentum_decays=(0.5, 0.9),
                    time_scales=(1.0, 10.0), **kwargs)


def trajectory(seed: int = 0):
    """Gradients, parameters, Hessian-diagonal estimates and losses of NUM_STEPS made-up steps (float64 numpy)."""
    rng = np.random.default_rng(seed)
    grads = rng.normal(size=(NUM_STEPS, SIZE)) * np.logspace(-3, 0, SIZE)
    params = np.cumsum(rng.normal(size=(NUM_STEPS, SIZE)) * 0.1, axis=0)
    params[3, 2] = params[2, 2]  # one coordinate that does not move: the secant must stay finite
    hessians = rng.normal(size=(NUM_STEPS, SIZE))
    losses = np.asarray([3.0, 2.5, 2.7, 1.9, 1.0, 1.2])
    return grads, params, hessians, losses


def run_parameter_feature(name: str, opt: lopt.FeatureLOpt, with_hessian: bool = True) -> np.ndarray:
    """Drives one per-parameter feature over the trajectory; returns its raw rows [steps, width, size]."""
    feature = feature_sets.get_feature(name)
    grads, params, hessians, _ = trajectory()
    state = feature.init(opt, jnp.asarray(params[0], jnp.float32))
    rows = []
    for t in range(NUM_STEPS):
        inputs = feature_sets.ParameterInputs(
            jnp.asarray(grads[t], jnp.float32), jnp.asarray(params[t], jnp.float32),
            jnp.asarray(hessians[t], jnp.float32) if with_hessian else None, jnp.asarray(t, jnp.int32))
        value, state = feature.update(opt, inputs, state)
        rows.append(np.asarray(value))
    return np.stack(rows)


def run_global_feature(name: str, opt: lopt.FeatureLOpt, num_steps=20, domain=None) -> np.ndarray:
    feature = feature_sets.get_feature(name)
    *_, losses = trajectory()
    state = feature.init(opt)
    values = []
    for t in range(NUM_STEPS):
        inputs = feature_sets.GlobalInputs(jnp.asarray(t, jnp.int32), num_steps, jnp.float32(losses[t]), domain)
        value, state = feature.update(opt, inputs, state)
        values.append(np.asarray(value))
    return np.stack(values)


def ema(values: np.ndarray, decay: float, start: int = 0) -> np.ndarray:
    """EMAs started at values[start] (no zero bias), zeros before `start`."""
    out, current = np.zeros_like(values), None
    for t in range(start, len(values)):
        current = values[t] if current is None else decay * current + (1 - decay) * values[t]
        out[t] = current
    return out


def expected_parameter_feature(name: str, opt: lopt.FeatureLOpt) -> np.ndarray:
    """The feature's rows [steps, width, size] recomputed in numpy from its definition (module docstring)."""
    grads, params, hessians, _ = trajectory()
    if name == "gradient":
        return grads[:, None]
    if name == "parameter":
        return params[:, None]
    if name == "momenta":
        momenta, out = np.zeros((len(opt.momentum_decays), SIZE)), []
        for g in grads:
            momenta = np.asarray(opt.momentum_decays)[:, None] * momenta + (1 - np.asarray(opt.momentum_decays))[:, None] * g
            out.append(momenta)
        return np.stack(out)
    if name == "direction":
        return (grads / (np.linalg.norm(grads, axis=1, keepdims=True) + 1e-8))[:, None]
    if name == "log_abs":
        return np.log(np.abs(grads) + 1e-8)[:, None]
    if name == "variance":
        decay = 1 - 2 / (opt.variance_window + 1)
        out = []
        for t in range(NUM_STEPS):  # the weighted variance of g_0..g_t, weights decay^t and (1 - decay) decay^(t - i)
            weights = np.asarray([decay ** t] + [(1 - decay) * decay ** (t - i) for i in range(1, t + 1)])
            mean = weights @ grads[: t + 1]
            out.append(weights @ np.square(grads[: t + 1] - mean))
        return np.stack(out)[:, None]
    if name == "hessian_diag":
        return ema(hessians, opt.curvature_decay)[:, None]
    if name == "secant":
        estimates = np.zeros_like(grads)
        for t in range(1, NUM_STEPS):
            dg, dtheta = grads[t] - grads[t - 1], params[t] - params[t - 1]
            delta = opt.secant_delta * np.sqrt(np.mean(np.square(dtheta)))
            estimates[t] = dg * dtheta / (np.square(dtheta) + np.square(delta))
        return ema(estimates, opt.curvature_decay, start=1)[:, None]
    raise AssertionError(name)


PARAMETER_FEATURES = [n for n in ALL_FEATURES if feature_sets.get_feature(n).kind == "parameter"]


@pytest.mark.parametrize("name", PARAMETER_FEATURES)
def test_each_parameter_feature_matches_its_definition_recomputed_in_numpy(name):
    opt = settings(variance_window=4, curvature_decay=0.7)
    got = run_parameter_feature(name, opt)
    want = expected_parameter_feature(name, opt)
    assert got.shape == want.shape == (NUM_STEPS, feature_sets.get_feature(name).width(opt), SIZE)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6 * np.max(np.abs(want)))


def test_global_features_match_their_definitions_and_domain_defaults_to_zeros():
    opt = settings()
    *_, losses = trajectory()
    steps = np.arange(NUM_STEPS)
    np.testing.assert_allclose(run_global_feature("time", opt),
                               np.tanh(steps[:, None] / np.asarray([1.0, 10.0]) - 1), rtol=1e-6)
    fraction = np.clip(steps / 20.0, 0, 1)
    np.testing.assert_allclose(
        run_global_feature("fraction", opt, num_steps=20),
        np.concatenate([fraction[:, None], np.tanh(10 * (fraction[:, None] - np.asarray([0.1, 0.25, 0.5, 0.75, 0.9])))],
                       axis=1), rtol=1e-5, atol=1e-6)
    fast, slow = ema(losses, 0.9), ema(losses, 0.99)
    minimum = np.minimum.accumulate(losses)
    want = np.stack([np.tanh((fast - losses[0]) / losses[0]), np.tanh((fast - slow) / losses[0]),
                     np.tanh((fast - minimum) / losses[0]), np.ones(NUM_STEPS)], axis=1)
    np.testing.assert_allclose(run_global_feature("loss_progress", opt), want, rtol=1e-5, atol=1e-6)
    domain = jnp.asarray([0.5, -1.0, 2.0])
    np.testing.assert_array_equal(run_global_feature("domain", opt, domain=domain), np.tile(domain, (NUM_STEPS, 1)))
    np.testing.assert_array_equal(run_global_feature("domain", opt), np.zeros((NUM_STEPS, 3)))
    with pytest.raises(ValueError, match="domain_width=3"):
        run_global_feature("domain", opt, domain=jnp.ones(4))


def test_hessian_feature_reads_zero_when_the_loop_passes_no_estimate():
    assert np.all(run_parameter_feature("hessian_diag", settings(), with_hessian=False) == 0)


def test_inputs_are_the_features_in_list_order_each_normalised_as_declared():
    opt = lopt.get("feature_lopt", features=("log_abs", "gradient", "time", "direction", "variance"),
                   time_scales=(3.0,), hidden_sizes=(8,), step_mult=0.1, exp_mult=0.5)
    theta = opt.init(jax.random.key(0))
    tx = opt.transformation(theta)
    grads, params, *_ = trajectory()
    update = jax.jit(tx.update)
    state = tx.init({"w": jnp.asarray(params[0], jnp.float32)})
    for t in range(2):
        p = {"w": jnp.asarray(params[t], jnp.float32)}
        updates, state = update({"w": jnp.asarray(grads[t], jnp.float32)}, state, p)
    g = grads[1]
    weight = 2 / (opt.variance_window + 1)
    variance = (1 - weight) * weight * (grads[1] - grads[0]) ** 2  # the EW variance of g_0, g_1
    inputs = np.stack([
        np.log(np.abs(g) + 1e-8),
        g / np.sqrt(1e-5 + np.mean(g ** 2)),  # small_fc_lopt's normaliser
        np.full(SIZE, np.tanh(1 / 3.0 - 1)),
        g / (np.linalg.norm(g) + 1e-8),
        variance / np.sqrt(np.mean(variance ** 2)),  # scale-free
    ], axis=1)
    steps = opt.update_from_features(theta, {"mlp": jnp.asarray(inputs, jnp.float32)})["mlp"]
    assert opt.num_inputs == 5
    np.testing.assert_allclose(updates["w"], -0.1 * np.asarray(steps), rtol=1e-4, atol=1e-7)


def test_default_features_compute_small_fc_lopts_updates():
    params = {"w": jax.random.normal(jax.random.key(1), (5, 3)), "b": jnp.zeros(3)}

    def loss_fn(p):
        return jnp.sum(jnp.tanh(p["w"]) ** 2) + 3 * jnp.sum((p["b"] - 1) ** 2)

    reference, composed = lopt.get("small_fc_lopt"), lopt.get("feature_lopt")
    assert composed.features == ("gradient", "parameter", "momenta", "time") and composed.num_inputs == 19
    theta = reference.init(jax.random.key(0))
    txs = [reference.transformation(theta), composed.transformation(theta)]
    states, current = [tx.init(params) for tx in txs], [params, params]
    updates = [jax.jit(lambda p, s, tx=tx: tx.update(jax.grad(loss_fn)(p), s, p)) for tx in txs]
    for _ in range(4):
        outputs = [update(p, s) for update, s, p in zip(updates, states, current)]
        for a, b in zip(jax.tree.leaves(outputs[0][0]), jax.tree.leaves(outputs[1][0])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
        states = [o[1] for o in outputs]
        current = [optax.apply_updates(p, o[0]) for p, o in zip(current, outputs)]


def test_width_and_state_follow_the_feature_list():
    opt = settings(variance_window=3)
    assert opt.num_inputs == 1 + 1 + 2 + 2 + 6 + 4 + 1 + 1 + 1 + 1 + 1 + 3
    assert opt.init(jax.random.key(0))["w0"].shape == (opt.num_inputs, 32)
    assert opt.state_values_per_parameter == 2 + 2 + 1 + 3
    assert opt.extra_update_args == ("loss", "hessian_diag", "domain_features")
    params = {"a": jnp.ones((2, 3)), "b": jnp.ones(4)}
    state = opt.transformation(opt.init(jax.random.key(0))).init(params)
    per_parameter = sum(x.size for name in PARAMETER_FEATURES for x in jax.tree.leaves(state.features[name]))
    assert per_parameter == opt.state_values_per_parameter * 10
    assert lopt.get("feature_lopt", features=("gradient",)).extra_update_args == ()


def test_unknown_repeated_or_inconsistent_features_give_one_line_errors():
    with pytest.raises(lopt.LearnedOptimizerError, match=r"unknown feature 'curvature'; known features: gradient") as err:
        lopt.get("feature_lopt", features=("gradient", "curvature"))
    assert "\n" not in str(err.value)
    with pytest.raises(lopt.LearnedOptimizerError, match="lists gradient more than once"):
        lopt.get("feature_lopt", features=("gradient", "gradient"))
    with pytest.raises(lopt.LearnedOptimizerError, match="at least one per-parameter feature"):
        lopt.get("feature_lopt", features=("time",))
    with pytest.raises(lopt.LearnedOptimizerError, match="domain_width >= 1"):
        lopt.get("feature_lopt", features=("gradient", "domain"))
    config = config_lib.load_config(REPO / "configs" / "feature_lopt.py")
    with pytest.raises(config_lib.ConfigError, match="config.optimizer: unknown feature 'nope'") as err:
        build_lib.build(config_lib.parse_overrides(config, ["--config.optimizer.kwargs.features=('gradient','nope')"]))
    assert "\n" not in str(err.value)


def quadratic_loss(matrix):
    return lambda p: 0.5 * p["x"] @ matrix @ p["x"] + jnp.sum(jnp.sin(p["y"]))


def test_hutchinson_over_all_sign_vectors_is_exactly_the_hessian_diagonal():
    dim = 6
    a = np.random.default_rng(0).normal(size=(dim, dim))
    matrix = jnp.asarray(a + a.T, jnp.float32)
    params = {"x": jnp.linspace(-1, 1, dim), "y": jnp.asarray([0.3, -0.7])}
    loss_fn = quadratic_loss(matrix)
    signs = jnp.asarray(list(itertools.product([-1.0, 1.0], repeat=dim + 2)), jnp.float32)
    probes = {"x": signs[:, :dim], "y": signs[:, dim:]}
    estimates = jax.vmap(lambda z: update_arguments.hutchinson_diagonal(loss_fn, params, z)[2])(probes)
    # E[z_i z_j] = 0 exactly over all 2^8 sign vectors, so the mean is the diagonal up to float32 rounding
    np.testing.assert_allclose(np.mean(estimates["x"], axis=0), np.diag(matrix), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.mean(estimates["y"], axis=0), -np.sin(params["y"]), rtol=1e-5, atol=1e-6)
    loss, grads, _ = update_arguments.hutchinson_diagonal(loss_fn, params, jax.tree.map(lambda x: x[0], probes))
    np.testing.assert_allclose(grads["x"], matrix @ params["x"], rtol=1e-5)
    np.testing.assert_allclose(loss, loss_fn(params), rtol=1e-6)


def test_hutchinson_with_random_probes_converges_to_the_diagonal_within_its_standard_error():
    dim, num_probes = 5, 4000
    a = np.random.default_rng(1).normal(size=(dim, dim))
    matrix = a + a.T
    params = {"x": jnp.ones(dim), "y": jnp.zeros(1)}
    keys = jax.random.split(jax.random.key(7), num_probes)
    estimates = jax.vmap(lambda k: update_arguments.hutchinson_diagonal(
        quadratic_loss(jnp.asarray(matrix, jnp.float32)), params, update_arguments.hutchinson_probe(k, params))[2])(keys)
    # coordinate i is H_ii + sum_{j != i} H_ij z_i z_j: mean H_ii, variance sum_{j != i} H_ij^2 per probe
    standard_error = np.sqrt((np.sum(matrix ** 2, axis=1) - np.diag(matrix) ** 2) / num_probes)
    error = np.abs(np.mean(estimates["x"], axis=0) - np.diag(matrix))
    assert np.all(error < 5 * standard_error), (error, standard_error)
    assert np.all(np.abs(np.asarray(estimates["x"])) > 0)  # single probes are noisy, not the diagonal itself
    assert not np.allclose(estimates["x"][0], np.diag(matrix), atol=1e-3)


def test_loops_compute_only_the_arguments_an_optimizer_reads():
    params = {"x": jnp.ones(3), "y": jnp.zeros(1)}
    loss_fn = quadratic_loss(jnp.diag(jnp.asarray([1.0, 2.0, 3.0])))
    _, _, plain = update_arguments.loss_gradient_and_update_args(lopt.get("small_fc_lopt"), loss_fn, params)
    assert set(plain) == {"loss"}
    domain_calls = []
    wanting = settings()
    with pytest.raises(ValueError, match="probe_key"):
        update_arguments.loss_gradient_and_update_args(wanting, loss_fn, params)
    _, _, full = update_arguments.loss_gradient_and_update_args(
        wanting, loss_fn, params, probe_key=jax.random.key(0),
        domain_features=lambda: domain_calls.append(1) or jnp.ones(3))
    assert set(full) == {"loss", "hessian_diag", "domain_features"} and domain_calls == [1]
    np.testing.assert_allclose(full["hessian_diag"]["x"], [1.0, 2.0, 3.0])  # a diagonal Hessian: exact


FEATURE_LISTS = {
    "default": ("gradient", "parameter", "momenta", "time"),
    "direction": ("gradient", "parameter", "momenta", "time", "direction"),
    "log_abs": ("gradient", "parameter", "momenta", "time", "log_abs"),
    "variance": ("gradient", "parameter", "momenta", "time", "variance"),
    "hessian_diag": ("gradient", "parameter", "momenta", "time", "hessian_diag"),
    "secant": ("gradient", "parameter", "momenta", "time", "secant"),
    "schedule": ("gradient", "momenta", "fraction", "loss_progress"),
    "domain": ("gradient", "momenta", "domain"),
    "all": ALL_FEATURES,
}


@pytest.mark.parametrize("label", FEATURE_LISTS)
def test_export_records_the_feature_list_and_load_rebuilds_it(label, tmp_path):
    features = FEATURE_LISTS[label]
    opt = lopt.get("feature_lopt", features=features, hidden_sizes=(4,), variance_window=5,
                   domain_width=2 if "domain" in features else 0)
    theta = opt.init(jax.random.key(3))
    path = lopt.save(tmp_path / f"{label}.lopt", opt, theta)
    loaded = lopt.load(path)
    assert loaded.config["features"] == list(features) or tuple(loaded.config["features"]) == features
    assert loaded.optimizer == opt and loaded.optimizer.features == features
    params = {"w": jnp.linspace(-1, 1, 6).reshape(2, 3), "b": jnp.ones(2)}
    loss_fn = lambda p: jnp.sum(p["w"] ** 4) + jnp.sum(jnp.cos(p["b"]))
    updates = []
    for tx in (opt.transformation(theta, num_steps=10), loaded.transformation(num_steps=10)):

        @jax.jit
        def step(current, state, key):
            _, grads, kwargs = update_arguments.loss_gradient_and_update_args(
                opt, loss_fn, current, probe_key=key, domain_features=jnp.asarray([1.0, -1.0]))
            update, state = tx.update(grads, state, current, **kwargs)
            return optax.apply_updates(current, update), state, update

        state, current, out = tx.init(params), params, []
        for k in range(2):
            current, state, update = step(current, state, jax.random.key(k))
            out.append(update)
        updates.append(out)
    for a, b in zip(jax.tree.leaves(updates[0]), jax.tree.leaves(updates[1])):
        np.testing.assert_array_equal(a, b)


def test_an_export_naming_an_unknown_feature_fails_to_load_with_one_line(tmp_path, monkeypatch):
    opt = lopt.get("feature_lopt", features=("gradient", "log_abs"), hidden_sizes=(4,))
    path = lopt.save(tmp_path / "x.lopt", opt, opt.init(jax.random.key(0)))
    monkeypatch.delitem(feature_sets._FEATURES, "log_abs")
    with pytest.raises(lopt.ExportError, match="unknown feature 'log_abs'") as err:
        lopt.load(path)
    assert "\n" not in str(err.value)


class HessianSGD(lopt.LearnedOptimizer):
    """theta <- theta - lr * hessian_diag: the update shows whether (and what) the loop passed."""

    name = "_test_hessian_sgd"
    extra_update_args = ("hessian_diag",)

    def init(self, key):
        return {"lr": jnp.asarray(0.1)}

    def transformation(self, meta_params, *, num_steps=None):
        def update(grads, state, params=None, *, hessian_diag=None, **extra):
            assert hessian_diag is not None, "the loop did not pass hessian_diag"
            return jax.tree.map(lambda h: -meta_params["lr"] * h, hessian_diag), state

        return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def test_unroll_and_evaluation_pass_the_hutchinson_estimate_to_an_optimizer_that_reads_it():
    family, opt = FixedQuadraticFamily(), HessianSGD()
    theta = opt.init(None)
    start = family.task(None).init(None)
    # the quadratic's Hessian is diagonal (scales for x, 0.5 for y), so every probe gives it exactly
    x_after = lambda n: start["x"] - n * 0.1 * family.scales
    y_after = lambda n: start["y"] - n * 0.1 * 0.5
    unroll = meta_train.TruncatedUnroll(family, opt, meta_train.ConstantHorizon(10, stagger=False))
    particles = jax.tree.map(lambda x: x[None], theta)
    state = unroll.init_task(particles, jax.random.key(0))
    state, _ = unroll.truncation(particles, state, jax.random.key(1), 3)
    np.testing.assert_allclose(state.params["x"][0], x_after(3), rtol=1e-5)
    np.testing.assert_allclose(state.params["y"][0], y_after(3), rtol=1e-5)
    result = curves.train_curves(family, opt, theta, jax.random.split(jax.random.key(0), 1), num_steps=4)
    expected = 0.5 * np.sum(family.scales * x_after(4) ** 2) + 0.25 * np.sum(y_after(4) ** 2)
    np.testing.assert_allclose(result.final_losses[0], expected, rtol=1e-5)


def test_meta_training_a_non_default_feature_list_through_the_unroll_lowers_the_inner_loss():
    family = FixedQuadraticFamily()
    opt = lopt.get("feature_lopt", features=("gradient", "momenta", "log_abs", "variance", "secant", "hessian_diag",
                                             "time"),
                   hidden_sizes=(8,), step_mult=0.02, momentum_decays=(0.9,), time_scales=(10.0,))
    unroll = meta_train.TruncatedUnroll(family, opt, meta_train.ConstantHorizon(12, stagger=False))

    @jax.jit
    def meta_loss_and_grad(theta):
        def meta_loss(theta):
            particles = jax.tree.map(lambda x: x[None], theta)
            state = unroll.init_task(particles, jax.random.key(0))
            _, result = unroll.truncation(particles, state, jax.random.key(1), 12)
            return jnp.mean(result.meta_losses)

        return jax.value_and_grad(meta_loss)(theta)

    theta = opt.init(jax.random.key(0))
    meta_opt = optax.adam(0.03)
    meta_state = meta_opt.init(theta)
    first, _ = meta_loss_and_grad(theta)
    for _ in range(25):
        loss, grad = meta_loss_and_grad(theta)
        change, meta_state = meta_opt.update(grad, meta_state, theta)
        theta = optax.apply_updates(theta, change)
    last, _ = meta_loss_and_grad(theta)
    assert np.isfinite(last) and last < 0.7 * first, (first, last)


def test_finance_tasks_supply_their_asset_class_and_volatility():
    family = tasks.get("finance", market="synthetic")
    cfg = family.sample(jax.random.key(4))
    vector = np.asarray(jax.jit(lambda c: family.task(c).domain_features())(cfg))
    assert vector.shape == (len(tasks.finance.DOMAIN_FEATURES),)
    np.testing.assert_array_equal(vector[:5], [0, 0, 0, 0, 1])  # synthetic series
    asset = int(cfg["asset"])
    series = family.series.value
    start, end = int(family.bounds[asset, 0]), int(family.bounds[asset, 1])
    returns = series.returns[asset, start:end][series.valid[asset, start:end]].astype(np.float64)
    np.testing.assert_allclose(vector[5], np.log10(np.sqrt(np.mean(returns ** 2))) + 2.0, rtol=1e-5)
    assert [tasks.finance.asset_class(n) for n in ("fx:EXJPUS", "sp500", "wti", "AAPL", "synthetic_03")] == [
        "currency", "index", "commodity", "stock", "synthetic"]


def test_every_ablation_row_is_a_valid_config(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_features", REPO / "scripts" / "bench_features.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_features", bench)  # its dataclass looks its module up there
    spec.loader.exec_module(bench)
    for name, row in bench.ROWS.items():
        assert bench.available(row), f"row {name} needs {row.needs}, which this version should have"
        path = tmp_path / f"{name}.py"
        path.write_text(bench.row_config_source(row.change, meta_steps=7))
        config = config_lib.load_config(path)
        config_lib.validate(config)
        optimizer = build_lib.build_optimizer(config)
        regularizer = config_lib.regularizer_settings(config)
        regularizer.check_optimizer(optimizer)
        assert config.meta_train.num_steps == 7
        if name in bench.REGULARIZER_WEIGHTS:
            assert regularizer.enabled and optimizer.features == bench.BASELINE_FEATURES
        elif name in bench.ADDED_FEATURES:
            assert optimizer.features == bench.BASELINE_FEATURES + (name,)
