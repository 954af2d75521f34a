"""Gradient estimators beyond PES: each lowers the meta-loss; PES is unbiased where truncated backprop is not."""

from __future__ import annotations

import textwrap

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
import meta_train
import tasks
from meta_train import build as build_lib
from meta_train import config as config_lib
from meta_train.evaluation import curves as evaluate
from tests.helpers import FixedQuadraticFamily, MomentumLOpt

ESTIMATORS = {
    "truncated_es": lambda: meta_train.TruncatedES(num_tasks=16, trunc_length=10, std=0.05),
    "full_horizon_es_last": lambda: meta_train.FullHorizonES(num_tasks=16, horizon_length=50, std=0.05, loss_type="last"),
    "tbptt": lambda: meta_train.TruncatedBackprop(num_tasks=16, trunc_length=10),
    "evosax_PersistentES": lambda: meta_train.EvosaxEstimator("PersistentES", num_tasks=16, trunc_length=10, std=0.05),
    "evosax_Open_ES": lambda: meta_train.EvosaxEstimator("Open_ES", num_tasks=16, trunc_length=10, std=0.05),
    "evosax_SNES": lambda: meta_train.EvosaxEstimator("SNES", num_tasks=16, trunc_length=10, std=0.05),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimator_raises_a_too_small_learning_rate_and_lowers_the_meta_loss(name):
    trainer = meta_train.Trainer(
        tasks.get("quadratic", dim=8), lopt.get("adam", learning_rate=1e-3), ESTIMATORS[name](),
        meta_train.ConstantHorizon(50), optax.adam(0.1),
    )
    state = trainer.init(jax.random.key(0))
    initial = state.meta_params
    for _ in range(20):
        state, metrics = trainer.step(state)
        assert np.isfinite(float(metrics["meta_loss"]))
    assert float(state.meta_params["log_learning_rate"]) > np.log(1e-3) + 0.5
    keys = evaluate.held_out_task_keys(0, 16)
    before = evaluate.train_curves(trainer.family, trainer.learned_optimizer, initial, keys, 50)
    after = evaluate.train_curves(trainer.family, trainer.learned_optimizer, state.meta_params, keys, 50)
    assert np.mean(after.final_normalized) < 0.9 * np.mean(before.final_normalized)


def test_gradient_accumulation_averages_several_estimator_calls():
    family, optimizer = FixedQuadraticFamily(), MomentumLOpt()
    horizon = meta_train.ConstantHorizon(30, stagger=False)

    def first_update(accumulate, num_tasks):
        trainer = meta_train.Trainer(family, optimizer, meta_train.TruncatedBackprop(num_tasks, 10), horizon,
                                     optax.sgd(1.0), accumulate=accumulate)
        state = trainer.init(jax.random.key(0))
        new_state, metrics = trainer.step(state)
        change = jax.tree.map(lambda a, b: a - b, new_state.meta_params, state.meta_params)
        return change, metrics, trainer

    # Deterministic identical tasks: 3 accumulated calls of 2 tasks = mean over 3 consecutive truncations.
    change, metrics, trainer = first_update(3, 2)
    assert trainer.inner_steps_per_meta_step == 2 * 1 * 10 * 3
    unroll = meta_train.TruncatedUnroll(family, optimizer, horizon)
    theta = optimizer.init(None)

    def truncation_loss(theta, state, k):
        particles = jax.tree.map(lambda x: x[None], theta)
        state, result = unroll.truncation(particles, state, jax.random.key(k), 10)
        return jnp.mean(result.meta_losses), state

    state = unroll.init_task(jax.tree.map(lambda x: x[None], theta), jax.random.key(0))
    expected = jax.tree.map(jnp.zeros_like, theta)
    for k in range(3):
        gradient, state = jax.grad(truncation_loss, has_aux=True)(theta, jax.lax.stop_gradient(state), k)
        expected = jax.tree.map(lambda e, g: e - g / 3, expected, gradient)
    for a, b in zip(jax.tree.leaves(change), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    assert int(metrics["num_restarts"]) == 2  # one restart per task, at step 30


class IllConditionedFamily(FixedQuadraticFamily):
    """The fixed quadratic with curvatures spanning 10^2.5: momentum pays off only over long runs."""

    def __init__(self):
        self.scales = jnp.logspace(-2.5, 0.0, 4)


def meta_train_to_convergence(estimator, num_steps, stagger=True):
    trainer = meta_train.Trainer(
        IllConditionedFamily(), MomentumLOpt(learning_rate=0.5, momentum=0.5), estimator,
        meta_train.ConstantHorizon(100, stagger=stagger), optax.adam(optax.cosine_decay_schedule(0.05, num_steps, 0.01)),
    )
    state = trainer.init(jax.random.key(0))
    for _ in range(num_steps):
        state, _ = trainer.step(state)
    return np.array([float(state.meta_params["log_lr"]), float(state.meta_params["momentum_logit"])])


def test_pes_converges_where_exact_gradients_do_and_truncated_backprop_does_not():
    exact = meta_train_to_convergence(meta_train.TruncatedBackprop(1, 100), 300, stagger=False)
    truncated = meta_train_to_convergence(meta_train.TruncatedBackprop(10, 10), 1000)
    pes = meta_train_to_convergence(meta_train.PES(64, 10, 0.01), 1000)
    pes_error, truncated_error = np.max(np.abs(pes - exact)), np.max(np.abs(truncated - exact))
    assert pes_error < 0.04, (pes, exact)
    assert truncated_error > 0.1, (truncated, exact)
    assert truncated_error > 3 * pes_error


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("truncated_es", {"trunc_length": 10}, meta_train.TruncatedES),
        ("tbptt", {"trunc_length": 10}, meta_train.TruncatedBackprop),
        ("full_horizon_es", {"horizon_length": 50}, meta_train.FullHorizonES),
        ("evosax", {"strategy": "SNES", "trunc_length": 10}, meta_train.EvosaxEstimator),
    ],
)
def test_estimators_are_selectable_from_the_config(name, kwargs, expected):
    config = config_lib.base_config()
    config.task.family = "quadratic"
    config.meta_train.horizon.kwargs.length = 50
    config.meta_train.accumulate = 2
    config.meta_train.estimator = ml_collections.ConfigDict({"name": name, "kwargs": kwargs})
    run = build_lib.build(config)
    assert isinstance(run.trainer.estimator, expected)
    state = run.trainer.init(jax.random.key(0))
    state, metrics = run.trainer.step(state)
    assert np.isfinite(float(metrics["meta_loss"]))


def test_bad_estimator_settings_are_config_errors():
    config = config_lib.base_config()
    config.task.family = "quadratic"
    config.meta_train.estimator.name = "evosax"
    config.meta_train.estimator.kwargs.strategy = "CMA"
    with pytest.raises(config_lib.ConfigError, match="config.meta_train.estimator: unknown evosax strategy 'CMA'"):
        build_lib.build(config)
    config.meta_train.estimator = ml_collections.ConfigDict({"name": "full_horizon_es", "kwargs": {"horizon_length": 300}})
    with pytest.raises(config_lib.ConfigError, match=r"horizon minimum \(200\) is shorter than trunc_length \(300\)"):
        build_lib.build(config)
    config.meta_train.estimator = ml_collections.ConfigDict({"name": "pes", "kwargs": {"sdt": 0.1}})
    with pytest.raises(config_lib.ConfigError, match="estimator 'pes' takes no argument.s. sdt; it takes: num_tasks"):
        build_lib.build(config)
    config.meta_train.estimator = ml_collections.ConfigDict({"name": "pse", "kwargs": {}})
    with pytest.raises(config_lib.ConfigError, match="unknown estimator 'pse'; did you mean 'pes'"):
        build_lib.build(config)


def test_a_registered_estimator_of_ones_own_is_selectable_from_a_config_file(tmp_path):
    config_file = tmp_path / "own_estimator.py"
    config_file.write_text(textwrap.dedent('''
        import meta_train
        from meta_train.config import base_config

        @meta_train.register_estimator("halved_pes_for_test")
        class HalvedPES(meta_train.PES):
            """PES whose meta-gradient is halved (a researcher's own estimator)."""

            def __init__(self, num_tasks=8, task_map="vmap", trunc_length=20, std=0.01, scale=0.5):
                super().__init__(num_tasks, trunc_length, std, task_map)
                self.scale = scale

            def estimate(self, unroll, meta_params, state, key, mask=None):
                gradient, state, metrics = super().estimate(unroll, meta_params, state, key, mask)
                return jax.tree.map(lambda g: self.scale * g, gradient), state, metrics

        import jax

        def get_config():
            config = base_config()
            config.task.family = "quadratic"
            config.task.kwargs = {"dim": 4}
            config.meta_train.num_tasks = 2
            config.meta_train.estimator.name = "halved_pes_for_test"
            config.meta_train.estimator.kwargs = {"trunc_length": 5, "scale": 0.25}
            config.meta_train.horizon.kwargs.length = 10
            return config
    '''))
    config = config_lib.load_config(config_file)
    run = build_lib.build(config)
    assert type(run.trainer.estimator).__name__ == "HalvedPES" and run.trainer.estimator.scale == 0.25
    assert run.trainer.estimator.trunc_length == 5 and run.trainer.estimator.num_tasks == 2
    state, metrics = run.trainer.step(run.trainer.init(jax.random.key(0)))
    assert np.isfinite(float(metrics["meta_loss"]))
    overridden = config_lib.parse_overrides(config_lib.load_config(config_file),
                                            ["--config.meta_train.estimator.kwargs.scale=0.75"])
    assert build_lib.build(overridden).trainer.estimator.scale == 0.75


def test_several_families_mixed_in_one_run_each_with_its_own_batch():
    config = config_lib.base_config()
    config.task.mixture = {
        "quad": {"family": "quadratic", "kwargs": {"dim": 8}},
        "digits": {"family": "mlp_image", "kwargs": {"dataset": "digits", "hidden": (16,)}},
    }
    config.optimizer.name = "adam"
    config.meta_train.num_tasks = 4
    config.meta_train.estimator.kwargs.trunc_length = 5
    config.meta_train.horizon.kwargs.length = 20
    run = build_lib.build(config)
    trainer = run.trainer
    assert sorted(f.name for f in run.family) == ["mlp_image", "quadratic"]
    state = trainer.init(jax.random.key(0))
    by_name = dict(zip([f.name for f in run.family], state.estimator_state))
    quadratic_tasks, digits_tasks = by_name["quadratic"], by_name["mlp_image"]
    assert jax.tree.leaves(quadratic_tasks.tasks.params)[0].shape[:2] == (4, 2)
    assert {p.shape[-1] for p in jax.tree.leaves(digits_tasks.tasks.params)} != {8}
    state, metrics = trainer.step(state)
    assert np.isfinite(float(metrics["meta_loss/quad"])) and np.isfinite(float(metrics["meta_loss/digits"]))
    np.testing.assert_allclose(
        float(metrics["meta_loss"]), (float(metrics["meta_loss/quad"]) + float(metrics["meta_loss/digits"])) / 2,
        rtol=1e-5,
    )
    assert meta_train.trainer.numbered_labels(["a", "b", "a", "a"]) == ["a", "b", "a-2", "a-3"]
    assert trainer.inner_steps_per_meta_step == 2 * 4 * 2 * 5
    config.task.mixture.digits.kwargs.hiden = 3
    with pytest.raises(config_lib.ConfigError, match="config.task.mixture.digits: task family 'mlp_image' has no argument"):
        build_lib.build(config)
