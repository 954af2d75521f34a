"""Baselines that search along a direction for their step: nonlinear conjugate gradient and L-BFGS, with their curves.

They need the objective itself (a line search evaluates it away from the iterate), not only a
gradient at the iterate, so they are not LearnedOptimizers; they are run here on one fixed batch
per task, which is the task's whole objective for families whose batches are the whole split
(robust_linear_regression, gaussian_mixture_mlp, logistic_regression with full_batch=True).
Curves count iterations (one direction and one line search each), as in Li & Malik's figures;
`evaluations` counts the objective-and-gradient evaluations each iteration's line search made (the
last one, at the accepted point, is reused as the next iteration's gradient), so that they can also
be compared with first-order methods at an equal number of evaluations (`at_evaluations`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from meta_train.evaluation.curves import run_keys_for_seed
from tasks.base import TaskFamily

Array = jax.Array


class PolakRibiereState(NamedTuple):
    """The previous gradient and search direction, and whether there is one yet."""

    previous_gradient: Any
    previous_direction: Any
    started: Array


def scale_by_polak_ribiere() -> optax.GradientTransformation:
    """Returns the nonlinear conjugate-gradient direction d = -g + beta d_prev, beta = max(0, PR) (Polak-Ribiere+).

    The direction restarts at -g on the first step and whenever it would not descend (<d, g> >= 0).
    """

    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        return PolakRibiereState(zeros, zeros, jnp.zeros((), jnp.bool_))

    def update_fn(grads, state, params=None):
        del params
        previous_norm = optax.tree.vdot(state.previous_gradient, state.previous_gradient)
        change = optax.tree.sub(grads, state.previous_gradient)
        beta = jnp.where(state.started & (previous_norm > 0),
                         jnp.maximum(0.0, optax.tree.vdot(grads, change) / jnp.maximum(previous_norm, 1e-30)), 0.0)
        direction = jax.tree.map(lambda g, d: -g + beta * d, grads, state.previous_direction)
        descends = optax.tree.vdot(direction, grads) < 0
        direction = jax.tree.map(lambda d, g: jnp.where(descends, d, -g), direction, grads)
        return direction, PolakRibiereState(grads, direction, jnp.ones((), jnp.bool_))

    return optax.GradientTransformation(init_fn, update_fn)


def conjugate_gradient(max_linesearch_steps: int = 20) -> optax.GradientTransformationExtraArgs:
    """Returns Polak-Ribiere+ nonlinear conjugate gradient with optax's zoom line search (strong Wolfe, c2 = 0.1).

    The line search starts from the previous step length (directions are not scaled like
    Newton steps) and needs `value`, `grad` and `value_fn` in `update`, as `optax.lbfgs` does.
    """
    return optax.chain(
        scale_by_polak_ribiere(),
        optax.scale_by_zoom_linesearch(max_linesearch_steps, curv_rtol=0.1, initial_guess_strategy="keep"),
    )


class LineSearchCurves(NamedTuple):
    """Losses [tasks, steps] before each iteration, final losses [tasks] and each iteration's line-search
    evaluations [tasks, steps]."""

    train_losses: np.ndarray
    final_losses: np.ndarray
    evaluations: np.ndarray

    def at_evaluations(self, budget: int) -> np.ndarray:
        """Returns [tasks]: the loss at the last iterate reached within `budget` evaluations after the initial one.

        A first-order method's iterate k costs k evaluations in these units (its loss is curves[:, k]).
        """
        losses = np.concatenate([self.train_losses, self.final_losses[:, None]], axis=1)
        spent = np.concatenate([np.zeros_like(self.evaluations[:, :1]), np.cumsum(self.evaluations, axis=1)], axis=1)
        reached = np.sum(spent <= budget, axis=1) - 1
        return losses[np.arange(losses.shape[0]), reached]


@functools.partial(jax.jit, static_argnames=("transformation", "num_steps"))
def _run(family: TaskFamily, transformation: Any, task_keys: Array, run_keys: Array, num_steps: int):
    def one_task(task_key, run_key):
        cfg_key = jax.random.split(task_key, 4)[0]
        _, init_key, steps_key, _ = jax.random.split(run_key, 4)
        task = family.task(family.sample(cfg_key))
        batch_key, loss_key = jax.random.split(steps_key)
        batch = task.sample_batch(batch_key, "train")

        def objective(params):
            return task.loss(params, loss_key, batch)

        value_and_grad = optax.value_and_grad_from_state(objective)
        params = task.init(init_key)

        def step(carry, _):
            params, state = carry
            value, grad = value_and_grad(params, state=state)
            updates, state = transformation.update(grad, state, params, value=value, grad=grad, value_fn=objective)
            searched = optax.tree_utils.tree_get(state, "num_linesearch_steps")
            return (optax.apply_updates(params, updates), state), (value, searched)

        (params, _), (losses, searched) = jax.lax.scan(step, (params, transformation.init(params)), None, num_steps)
        return losses, objective(params), searched

    return jax.vmap(one_task)(task_keys, run_keys)


def line_search_curves(family: TaskFamily, transformation: Any, task_keys: Array, num_steps: int,
                       seed: int = 0) -> LineSearchCurves:
    """Runs `transformation` (conjugate_gradient() or optax.lbfgs()) for `num_steps` iterations on one task per key.

    Tasks and initial parameters are those `curves.train_curves` uses for the same keys and seed,
    so the curves can be compared step by step.
    """
    outputs = _run(family, transformation, task_keys, run_keys_for_seed(task_keys, seed), num_steps)
    return LineSearchCurves(*(np.asarray(x) for x in outputs))
