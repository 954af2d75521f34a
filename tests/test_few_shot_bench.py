"""The few-shot benchmark's pieces on scikit-learn's bundled digits (no data folder): held-out classes stay held out,
the interval formula, the episode evaluation loop and lr tuning, the exactness of whole-episode truncated backprop,
the LSTM's loss input, and the one-line message without data."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import lopt
import tasks
from lopt.l2l_lstm import preprocess_gradient
from lopt.lstm import lstm_cell
from meta_train import build as build_lib
from meta_train import config as config_lib
from meta_train.evaluation import few_shot
from meta_train.evaluation.curves import held_out_task_keys

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--image-size", "8", "--hidden", "8", "--queries", "4"]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_few_shot", REPO / "scripts" / "bench_few_shot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


def tiny_family(**kwargs):
    return tasks.get("few_shot", **{"dataset": "digits", "ways": 3, "shots": 1, "queries": 4, "hidden": (8,),
                                    "activations": ("relu",), **kwargs})


def test_held_out_episodes_never_contain_meta_training_classes_or_images(bench):
    args = bench.parse_args(TINY)
    train, test = bench.build_families(args, shots=1)
    for family, classes in ((train, args.train_classes), (test, args.test_classes)):
        cfgs = jax.vmap(family.sample)(jax.random.split(jax.random.key(3), 300))
        drawn = {family.classes[i] for i in np.asarray(cfgs["classes"]).ravel()}
        assert drawn == set(classes)
    data = tasks.load_dataset("digits")
    test_images = {bytes(x): int(y) for x, y in zip(np.asarray(data.x["test"]), np.asarray(data.y["test"]))}
    for row, cls in enumerate(test.classes):
        for image in np.asarray(test.images[row]):
            assert test_images[bytes(image)] == cls  # a test-split image of that held-out class


def test_overlapping_classes_and_missing_data_are_one_line_errors(bench, tmp_path, capsys):
    assert bench.main(["--data-dir", str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "w")]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and message.startswith("bench_few_shot:") and "mnist" in message
    assert bench.main(TINY + ["--train-classes", "0", "1", "2", "3", "4", "--test-classes", "4", "5", "6", "7",
                              "8"]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "[4]" in message
    assert not (tmp_path / "w").exists()


def test_confidence_interval_is_the_mean_plus_minus_196_standard_errors():
    values = [1.0, 2.0, 3.0, 4.0]
    estimate = few_shot.mean_confidence_interval(values)
    half = 1.959963984540054 * math.sqrt(5.0 / 3.0) / 2.0  # sample sd sqrt(5/3), sqrt(n) = 2
    assert estimate.value == pytest.approx(2.5)
    assert (estimate.low, estimate.high) == (pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(400):  # coverage of a true mean of 0.3 by the interval of 600 Bernoulli(0.3) episodes
        interval = few_shot.mean_confidence_interval(rng.random(600) < 0.3)
        covered += interval.low <= 0.3 <= interval.high
    assert 0.92 <= covered / 400 <= 0.98
    assert math.isnan(few_shot.mean_confidence_interval([1.0, float("nan"), 2.0]).low)
    with pytest.raises(ValueError, match="at least 2"):
        few_shot.mean_confidence_interval([1.0])


def test_episode_curves_pair_the_episodes_and_sgd_learns_the_query_set():
    family = tiny_family()
    keys = held_out_task_keys(0, 8)
    sgd = lopt.get("sgd")
    good = few_shot.episode_curves(family, sgd, sgd.with_learning_rate(None, 0.3), keys, 6, chunk=4)
    frozen = few_shot.episode_curves(family, sgd, sgd.with_learning_rate(None, 1e-9), keys, 6, chunk=4)
    assert good.losses.shape == good.accuracies.shape == (8, 7)
    np.testing.assert_allclose(good.losses[:, 0], frozen.losses[:, 0], rtol=1e-6)  # same episodes, same init
    np.testing.assert_allclose(frozen.losses, frozen.losses[:, :1].repeat(7, axis=1), rtol=1e-5)
    assert np.mean(good.losses[:, -1]) < 0.7 * np.mean(good.losses[:, 0])
    assert np.mean(good.accuracies[:, -1]) > np.mean(good.accuracies[:, 0]) + 0.2
    np.testing.assert_allclose(good.accuracies * 12, np.round(good.accuracies * 12), atol=1e-4)  # 3 ways x 4 queries
    # the first episode by hand: one SGD step on its support set, then the query loss
    cfg_key, init_key, _ = jax.random.split(keys[0], 3)
    task = family.task(family.sample(cfg_key))
    params = task.init(init_key)
    support, query = task.sample_batch(keys[0], "train"), task.sample_batch(keys[0], "valid")
    grads = jax.grad(task.loss)(params, keys[0], support)
    stepped = jax.tree.map(lambda p, g: p - 0.3 * g, params, grads)
    assert good.losses[0, 1] == pytest.approx(float(task.loss(stepped, keys[0], query)), rel=1e-4)


def test_learning_rate_tuning_picks_the_rate_with_the_lowest_query_loss_and_skips_divergence():
    family = tiny_family()
    rates = (1e-6, 0.3, 1e4)
    choice = few_shot.tune_learning_rate(family, lopt.get("sgd"), rates, held_out_task_keys(1, 6), 5)
    assert choice.learning_rate == 0.3 and not choice.at_grid_edge
    assert choice.mean_losses[1] < choice.mean_losses[0] and choice.mean_losses[2] > choice.mean_losses[1]


def test_whole_episode_truncated_backprop_is_the_exact_gradient_of_the_query_loss():
    config = config_lib.load_config(REPO / "configs" / "few_shot_lstm.py")
    config.task.kwargs = ml_collections.ConfigDict(
        {**config.task.kwargs.to_dict(), "dataset": "digits", "image_size": 8, "hidden": (4,), "ways": 3,
         "queries": 3, "classes": (0, 1, 2, 3)})
    config.meta_train.num_tasks = 2
    config.optimizer.kwargs.hidden_size = 4
    run = build_lib.build(config)
    trainer, unroll = run.trainer, run.trainer.unroll(run.family)
    state = trainer.init(jax.random.key(0))
    meta_params = jax.tree.map(lambda x: x + 0.3 * jnp.sign(x + 0.01), state.meta_params)
    start = state.estimator_state.tasks
    assert np.all(np.asarray(start.step) == 0) and np.all(np.asarray(start.horizon) == 5)
    estimate = jax.jit(lambda theta, estimator_state: trainer.estimator.estimate(unroll, theta, estimator_state,
                                                                                 jax.random.key(1)))
    gradient, after, metrics = estimate(meta_params, state.estimator_state)
    assert float(metrics["num_restarts"]) == 2 and np.all(np.asarray(after.tasks.step) == 0)  # each call: one episode

    def episode_query_loss(theta, cfg, params):
        task = run.family.task(cfg)
        transformation = run.learned_optimizer.transformation(theta, num_steps=5)
        support, query = task.sample_batch(jax.random.key(0), "train"), task.sample_batch(jax.random.key(0), "valid")

        def step(carry, _):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(task.loss)(params, jax.random.key(0), support)
            updates, opt_state = transformation.update(grads, opt_state, params, loss=loss)
            params = optax.apply_updates(params, updates)
            return (params, opt_state), task.normalizer(task.loss(params, jax.random.key(0), query))

        _, losses = jax.lax.scan(step, (params, transformation.init(params)), None, length=5)
        return jnp.mean(losses)

    first_particle = jax.tree.map(lambda x: x[:, 0], start.params)
    mean_loss = lambda theta: jnp.mean(jax.vmap(episode_query_loss, (None, 0, 0))(theta, start.cfg, first_particle))
    expected = jax.jit(jax.grad(mean_loss))(meta_params)
    for got, want in zip(jax.tree.leaves(gradient), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-7)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(gradient)) > 0


def test_lstm_loss_input_equals_two_more_inputs_per_weight_and_is_required():
    optimizer = lopt.get("l2l_lstm", hidden_size=5, loss_input=True)
    meta_params = optimizer.init(jax.random.key(0))
    assert meta_params["lstm_0"]["w_x"].shape == (4, 20)
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    grads = {"w": jnp.linspace(-1e-3, 2e-3, 6)}
    transformation = optimizer.transformation(meta_params)
    state = transformation.init(params)
    update = jax.jit(lambda loss: transformation.update(grads, state, params, loss=loss)[0])
    updates, other = update(jnp.float32(0.7)), update(jnp.float32(2.0))
    assert not np.allclose(updates["w"], other["w"])
    inputs = jnp.concatenate([preprocess_gradient(grads["w"]),
                              jnp.broadcast_to(preprocess_gradient(jnp.float32(0.7)), (6, 2))], axis=-1)
    @jax.jit
    def by_hand(inputs):
        x, _ = lstm_cell(meta_params["lstm_0"], inputs, state.hidden["w"][0])
        x, _ = lstm_cell(meta_params["lstm_1"], x, state.hidden["w"][1])
        return 0.1 * (x @ meta_params["output"]["w"] + meta_params["output"]["b"])[:, 0]

    expected = by_hand(inputs)
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="loss=LOSS") as error:
        transformation.update(grads, state, params)
    assert "\n" not in str(error.value)
    plain = lopt.get("l2l_lstm", hidden_size=5)
    assert plain.init(jax.random.key(0))["lstm_0"]["w_x"].shape == (2, 20)
