"""Meta-regularisation: the penalties, their gradient in the trainer for every estimator, the metrics and config."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from meta_train import build as build_lib
from meta_train import config as config_lib
from meta_train import registry
from meta_train import run as run_lib
from meta_train.checkpoint import Checkpointer
from meta_train.horizons import ConstantHorizon
from meta_train.regularizer import MetaRegularizer, l2_penalty, smoothness_penalty
from meta_train.trainer import Trainer
from tests.helpers import FixedQuadraticFamily, MomentumLOpt

SMALL_CONV = dict(hidden_sizes=(8,), conv_channels=(4,), momentum_decays=(0.5, 0.9), time_scales=(1.0, 10.0))


def test_smoothness_of_a_linear_rule_is_the_squared_norm_of_its_direction_weights():
    optimizer = lopt.SmallFcLOpt(hidden_sizes=(), exp_mult=0.0)  # step = w0[:, 0] . features + b0[0]
    theta = optimizer.init(jax.random.key(0))
    want = float(jnp.sum(jnp.square(theta["w0"][:, 0])))
    for scale in (0.01, 1.0):
        got = float(smoothness_penalty(optimizer, theta, jax.random.key(1), scale=scale, num_samples=8192))
        np.testing.assert_allclose(got, want, rtol=0.08)
    assert float(smoothness_penalty(optimizer, jax.tree.map(jnp.zeros_like, theta), jax.random.key(1))) == 0.0


def test_small_fc_lopt_update_from_features_is_its_transformations_step_from_the_definition():
    optimizer = lopt.SmallFcLOpt(hidden_sizes=(8,), momentum_decays=(0.5, 0.9), time_scales=(1.0, 10.0))
    theta = optimizer.init(jax.random.key(2))
    param, grad = np.asarray([0.3, -1.0, 2.0], np.float32), np.asarray([0.5, 2.0, -1.0], np.float32)
    tx = optimizer.transformation(theta)
    update = tx.update({"x": grad}, tx.init({"x": param}), {"x": param})[0]["x"]
    rows = np.stack([grad, param, 0.5 * grad, 0.1 * grad])  # momenta after one step from zero
    rows = rows / np.sqrt(1e-5 + np.mean(rows ** 2, axis=1, keepdims=True))
    times = np.tanh(np.zeros(2) - 1.0)
    features = np.concatenate([rows, np.repeat(times[:, None], 3, axis=1)]).T
    steps = optimizer.update_from_features(theta, {"mlp": jnp.asarray(features)})["mlp"]
    np.testing.assert_allclose(np.asarray(update), -1e-3 * np.asarray(steps), rtol=1e-4)


def test_regularizer_gradient_matches_a_central_finite_difference():
    optimizer = lopt.get("conv_lopt", **SMALL_CONV)
    regularizer = MetaRegularizer(l2_weight=0.3, smoothness_weight=2.0, smoothness_scale=0.2, smoothness_samples=16)
    key = jax.random.key(4)
    with jax.enable_x64(True):  # the ReLU networks' kinks need steps too small for float32 differences
        theta = jax.tree.map(lambda x: x.astype(jnp.float64), optimizer.init(jax.random.key(3)))
        anchor = jax.tree.map(lambda x: x + 0.1, theta)
        value_and_grad = jax.jit(lambda params: regularizer.value_and_grad(optimizer, params, anchor, key))
        value, gradient, metrics = value_and_grad(theta)
        total = lambda params: value_and_grad(params)[0]  # noqa: E731

        def directional_derivatives(direction):  # (analytic, central finite difference) along a unit direction
            direction = jax.tree.map(lambda d: d / optax.tree.norm(direction), direction)
            epsilon = 1e-5
            finite_difference = (total(jax.tree.map(lambda t, d: t + epsilon * d, theta, direction))
                                 - total(jax.tree.map(lambda t, d: t - epsilon * d, theta, direction))) / (2 * epsilon)
            analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(gradient), jax.tree.leaves(direction)))
            return float(analytic), float(finite_difference)

        gradient_norm = float(optax.tree.norm(gradient))
        along_gradient = directional_derivatives(gradient)
        leaves, treedef = jax.tree.flatten(theta)
        keys = jax.random.split(jax.random.key(5), len(leaves))
        along_random = directional_derivatives(treedef.unflatten([jax.random.normal(k, x.shape, jnp.float64)
                                                                  for k, x in zip(keys, leaves)]))
    np.testing.assert_allclose(along_gradient, gradient_norm, rtol=1e-6)
    np.testing.assert_allclose(along_random[0], along_random[1], atol=1e-6 * gradient_norm)
    assert set(metrics) == {"regularizer", "regularizer_l2", "regularizer_smoothness"}
    np.testing.assert_allclose(float(value), 0.3 * float(metrics["regularizer_l2"])
                               + 2.0 * float(metrics["regularizer_smoothness"]), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["regularizer_l2"]), 0.5 * 0.01 * sum(x.size for x in leaves), rtol=1e-6)
    assert all(np.max(np.abs(np.asarray(gradient[part]["w0"]))) > 0 for part in ("conv", "head", "fallback"))


# The penalty's gradient is added after any estimator's estimate: one evolution-strategies and one backprop estimator.
ESTIMATORS = {"pes": {"trunc_length": 4, "std": 0.01}, "tbptt": {"trunc_length": 4}}


def tiny_trainer(estimator, regularizer=None, optimizer=None):
    estimator_object = registry.ESTIMATORS.build(estimator, num_tasks=2, **ESTIMATORS[estimator])
    return Trainer(FixedQuadraticFamily(dim=3), optimizer or lopt.SmallFcLOpt(hidden_sizes=(4,), step_mult=0.01),
                   estimator_object, ConstantHorizon(8), meta_optimizer=optax.sgd(1.0), regularizer=regularizer)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_every_estimators_meta_gradient_gets_the_penalty_gradient_and_zero_weights_change_nothing(estimator):
    key = jax.random.key(6)
    plain = tiny_trainer(estimator)
    zero = tiny_trainer(estimator, MetaRegularizer(l2_from_init=False, smoothness_samples=3))
    weighted = tiny_trainer(estimator, MetaRegularizer(l2_weight=0.25, l2_from_init=False))
    states = [trainer.step(trainer.init(key)) for trainer in (plain, zero, weighted)]
    (plain_state, plain_metrics), (zero_state, zero_metrics), (weighted_state, weighted_metrics) = states
    for got, want in zip(jax.tree.leaves(zero_state), jax.tree.leaves(plain_state)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert set(zero_metrics) == set(plain_metrics) and "regularizer" not in plain_metrics
    # SGD at rate 1 applies -(meta-gradient): the penalty 0.25 * 0.5 ||theta||^2 adds 0.25 * theta to it
    theta = plain.learned_optimizer.init(jax.random.split(key)[0])
    for got, plain_params, start in zip(*(jax.tree.leaves(t) for t in (weighted_state.meta_params,
                                                                        plain_state.meta_params, theta))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(plain_params - 0.25 * start), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(weighted_metrics["regularizer"]), 0.25 * float(l2_penalty(theta)), rtol=1e-6)
    assert float(weighted_metrics["meta_loss"]) == float(plain_metrics["meta_loss"])


def test_l2_from_init_is_measured_from_the_runs_start_which_the_checkpoint_keeps(tmp_path):
    trainer = tiny_trainer("pes", MetaRegularizer(l2_weight=0.5))
    state = trainer.init(jax.random.key(7))
    start = state.meta_params
    for _ in range(3):
        state, metrics = trainer.step(state)
    assert float(metrics["regularizer_l2"]) > 0  # measured before this step's update, after two others
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.save(3, state)
    restored = checkpointer.restore(trainer.init(jax.random.key(8)))
    checkpointer.close()
    for got, want in zip(jax.tree.leaves(restored.regularizer_anchor), jax.tree.leaves(start)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    _, resumed = trainer.step(restored)
    _, continued = trainer.step(state)
    np.testing.assert_allclose(float(resumed["regularizer_l2"]),
                               float(l2_penalty(state.meta_params, start)), rtol=1e-6)
    assert float(resumed["regularizer"]) == float(continued["regularizer"])
    assert jax.tree.leaves(tiny_trainer("pes").init(jax.random.key(7)).regularizer_anchor) == []


def test_the_smoothness_penalty_lowers_the_rules_sensitivity_and_is_logged_by_lopt_meta_train(tmp_path):
    config = config_lib.quadratic_experiment("small_fc_lopt", hidden_sizes=(8,), momentum_decays=(0.5, 0.9),
                                             time_scales=(1.0, 10.0))
    config.task.kwargs.dim = 4
    config.meta_train.num_tasks = 2
    config.meta_train.estimator.kwargs.trunc_length = 4
    config.meta_train.horizon.kwargs.length = 8
    config.meta_train.num_steps = 4
    config.meta_train.meta_learning_rate = 3e-2
    config.meta_train.regularizer.smoothness_weight = 100.0
    config.meta_train.regularizer.smoothness_samples = 8
    config.log_every = 1
    config.eval.enabled = False
    summary = run_lib.meta_train(config, tmp_path / "run", show_progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / run_lib.METRICS_FILE).read_text().splitlines()]
    assert len(lines) == 4
    np.testing.assert_allclose([line["regularizer"] for line in lines],
                               [100.0 * line["regularizer_smoothness"] for line in lines], rtol=1e-6)
    trained = lopt.load(summary["export"])
    start = trained.optimizer.init(jax.random.split(jax.random.key(config.seed))[0])  # Trainer.init's draw

    def sensitivity(theta):
        return float(smoothness_penalty(trained.optimizer, theta, jax.random.key(0), num_samples=512))

    assert sensitivity(trained.meta_params) < 0.7 * sensitivity(start)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("l2_weight = -1.0", "config.meta_train.regularizer.l2_weight must be a finite number >= 0, got -1.0"),
        ("smoothness_scale = 0.0", "config.meta_train.regularizer.smoothness_scale must be a finite number > 0"),
        ("smoothness_samples = 0", "config.meta_train.regularizer.smoothness_samples must be an integer >= 1"),
    ],
)
def test_bad_regularizer_settings_are_one_line_config_errors(setting, message):
    config = config_lib.quadratic_experiment("small_fc_lopt")
    key, value = setting.split(" = ")
    with config.meta_train.regularizer.unlocked():
        config.meta_train.regularizer[key] = eval(value)
    with pytest.raises(config_lib.ConfigError) as caught:
        config_lib.validate(config)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_config_typos_and_optimizers_without_a_feature_rule_are_one_line_errors():
    config = config_lib.quadratic_experiment("small_fc_lopt")
    with pytest.raises(config_lib.ConfigError, match="unknown config key --config.meta_train.regularizer.l2_weigth; "
                                                     "did you mean 'l2_weight'"):
        config_lib.parse_overrides(config, ["--config.meta_train.regularizer.l2_weigth=0.1"])
    with pytest.raises(config_lib.ConfigError, match="regularizer.l2_from_init expects true/false"):
        config_lib.parse_overrides(config, ["--config.meta_train.regularizer.l2_from_init=2"])
    with pytest.raises(ValueError, match="^l2_from_init must be True or False, got 1$"):
        MetaRegularizer(l2_from_init=1)
    config_lib.parse_overrides(config, ["--config.meta_train.regularizer.smoothness_weight=1"])
    assert config.meta_train.regularizer.smoothness_weight == 1.0
    config.optimizer.name, config.optimizer.kwargs = "adam", {}
    with pytest.raises(config_lib.ConfigError) as caught:
        build_lib.build(config)
    assert str(caught.value) == (
        "config.meta_train.regularizer.smoothness_weight: optimizer 'adam' does not expose its update as a function "
        "of its input features (update_feature_shapes / update_from_features), which the smoothness regulariser needs")
    with pytest.raises(lopt.LearnedOptimizerError, match="'_test_momentum' does not expose its update"):
        tiny_trainer("pes", MetaRegularizer(smoothness_weight=1.0), MomentumLOpt())


def test_a_workdir_saved_before_the_regularizer_existed_resumes():
    saved = json.loads(config_lib.quadratic_experiment("small_fc_lopt").to_json_best_effort())
    current = json.loads(json.dumps(saved))
    del saved["meta_train"]["regularizer"]
    assert run_lib._run_identity(saved) == run_lib._run_identity(current)
    current["meta_train"]["regularizer"]["l2_weight"] = 0.1
    assert run_lib._run_identity(saved) != run_lib._run_identity(current)
