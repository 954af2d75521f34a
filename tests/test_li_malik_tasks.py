"""The Li & Malik problem classes: deterministic whole-split objectives, outliers the Geman-McClure loss resists,
Gaussian-mixture classifiers; and the line-search baselines (conjugate gradient, L-BFGS) that need such objectives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
import tasks
from meta_train.evaluation import curves, line_search

WHOLE_SPLIT_FAMILIES = [
    ("robust_linear_regression", {}),
    ("gaussian_mixture_mlp", {}),
    ("logistic_regression", {"dataset": "synthetic", "dim": 3, "num_examples": 50, "full_batch": True}),
]


@pytest.mark.parametrize("name,kwargs", WHOLE_SPLIT_FAMILIES, ids=[n for n, _ in WHOLE_SPLIT_FAMILIES])
def test_every_batch_is_the_whole_split_so_the_objective_is_deterministic(name, kwargs):
    family = tasks.get(name, **kwargs)
    task = family.task(family.sample(jax.random.key(0)))
    first, second = task.sample_batch(jax.random.key(1), "train"), task.sample_batch(jax.random.key(2), "train")
    for a, b in zip(first, second):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert first[0].shape[0] == family.num_examples
    valid = task.sample_batch(jax.random.key(1), "valid")
    assert not np.allclose(np.asarray(valid[0]), np.asarray(first[0]))  # other examples of the same model


def test_sampled_minibatches_stay_the_logistic_default():
    family = tasks.get("logistic_regression", dataset="synthetic", dim=3, num_examples=50, batch_size=8)
    task = family.task(family.sample(jax.random.key(0)))
    first, second = task.sample_batch(jax.random.key(1), "train"), task.sample_batch(jax.random.key(2), "train")
    assert first[0].shape == (8, 3) and not np.allclose(np.asarray(first[0]), np.asarray(second[0]))


def test_robust_regression_has_its_outliers_and_the_loss_resists_them():
    family = tasks.get("robust_linear_regression", num_examples=400, max_outlier_fraction=0.3)
    cfg = family.sample(jax.random.key(3))
    cfg["outlier_fraction"] = jnp.float32(0.25)
    task = family.task(cfg)
    x, y = task.sample_batch(None, "train")
    model = jax.random.normal(jax.random.key(cfg["data_seed"]), (family.dim + 1,))
    inlier_residual = np.abs(np.asarray(y - x @ model[:-1] - model[-1]))
    outliers = inlier_residual > 5 * family.noise_std
    assert 0.15 < outliers.mean() < 0.35
    truth = {"w": model[:-1], "b": model[-1]}
    design = np.concatenate([np.asarray(x), np.ones((x.shape[0], 1))], axis=1)
    least_squares = np.linalg.lstsq(design, np.asarray(y), rcond=None)[0]
    fitted = {"w": jnp.asarray(least_squares[:-1]), "b": jnp.asarray(least_squares[-1])}
    assert task.loss(truth, None, (x, y)) < task.loss(fitted, None, (x, y)) < 1.0
    assert float(task.loss(truth, None, (x, y))) == pytest.approx(np.mean(outliers), abs=0.05)  # ~1 per outlier


def test_gaussian_mixture_classes_are_unions_of_clusters():
    family = tasks.get("gaussian_mixture_mlp", num_classes=2, clusters_per_class=2, num_examples=40)
    task = family.task(family.sample(jax.random.key(0)))
    x, y = task.sample_batch(None, "train")
    np.testing.assert_array_equal(np.asarray(y), np.arange(40) % 4 % 2)
    params = task.init(jax.random.key(1))
    assert task.apply(params, x).shape == (40, 2)
    assert 0.5 < float(task.normalizer(task.loss(params, None, (x, y)))) < 2.0


def test_conjugate_gradient_solves_a_quadratic_in_as_many_iterations_as_dimensions():
    matrix = jnp.asarray([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])

    def objective(x):
        return 0.5 * x @ matrix @ x - x @ jnp.ones(3)

    solver = line_search.conjugate_gradient()

    @jax.jit
    def solve(x):
        def step(carry, _):
            x, state = carry
            value, grad = jax.value_and_grad(objective)(x)
            updates, state = solver.update(grad, state, x, value=value, grad=grad, value_fn=objective)
            return (optax.apply_updates(x, updates), state), None

        return jax.lax.scan(step, (x, solver.init(x)), None, 3)[0][0]

    np.testing.assert_allclose(np.asarray(solve(jnp.zeros(3))), np.linalg.solve(np.asarray(matrix), np.ones(3)),
                               rtol=1e-3, atol=1e-4)


def test_line_search_curves_start_at_the_tasks_initial_loss_and_reach_the_optimum():
    family = tasks.get("logistic_regression", dataset="synthetic", dim=3, num_examples=50, full_batch=True)
    key = curves.held_out_task_keys(0, 1)
    task = family.task(family.sample(jax.random.split(key[0], 4)[0]))
    initial = task.loss(task.init(jax.random.split(key[0], 4)[1]), None, task.sample_batch(None, "train"))
    finals = []
    for solver in (line_search.conjugate_gradient(), optax.lbfgs()):
        result = line_search.line_search_curves(family, solver, key, 15)
        assert result.train_losses[0, 0] == pytest.approx(float(initial), rel=1e-6)
        assert np.all(np.diff(result.train_losses[0]) <= 1e-6) and np.all(result.evaluations[0] >= 1)
        budget = int(result.evaluations[0, :2].sum())  # exactly enough for two iterations
        assert result.at_evaluations(budget)[0] == result.train_losses[0, 2]
        assert result.at_evaluations(budget - 1)[0] == result.train_losses[0, 1]
        assert result.at_evaluations(0)[0] == result.train_losses[0, 0]
        finals.append(result.final_losses[0])
    assert finals[0] == pytest.approx(finals[1], rel=1e-4)  # both at the (convex) optimum
