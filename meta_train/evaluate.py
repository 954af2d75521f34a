"""Evaluation of optimizers on held-out tasks: training curves, final losses and per-task learning-rate tuning."""

from __future__ import annotations

import functools
from typing import Any, Dict, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks.base import TaskFamily

Array = jax.Array

HELD_OUT_OFFSET = 1_000_003


class Curves(NamedTuple):
    """Training losses [tasks, steps] and final losses [tasks], raw and normalised."""

    train_losses: np.ndarray
    final_losses: np.ndarray
    final_normalized: np.ndarray


def held_out_task_keys(seed: int, num_tasks: int) -> Array:
    """Returns keys of evaluation tasks; derived from a stream the meta-trainer never draws from."""
    base = jax.random.fold_in(jax.random.key(seed), HELD_OUT_OFFSET)
    return jax.random.split(base, num_tasks)


def _train_one(family: TaskFamily, learned_optimizer: Any, meta_params: Any, key: Array, num_steps: int, final_batches: int):
    cfg_key, init_key, run_key, final_key = jax.random.split(key, 4)
    task = family.task(family.sample(cfg_key))
    params = task.init(init_key)
    transformation = learned_optimizer.optimizer(meta_params, num_steps=num_steps)
    opt_state = transformation.init(params)

    def step(carry, step_key):
        params, opt_state = carry
        batch_key, loss_key = jax.random.split(step_key)
        loss, grads = jax.value_and_grad(task.loss)(params, loss_key, task.sample_batch(batch_key, "train"))
        updates, opt_state = transformation.update(grads, opt_state, params, loss=loss)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, opt_state), jax.random.split(run_key, num_steps))

    def final_loss(batch_key):
        loss_key, sample_key = jax.random.split(batch_key)
        return task.loss(params, loss_key, task.sample_batch(sample_key, "train"))

    final = jnp.mean(jax.vmap(final_loss)(jax.random.split(final_key, final_batches)))
    return losses, final, task.normalizer(final)


@functools.partial(jax.jit, static_argnames=("learned_optimizer", "num_steps", "final_batches"))
def _run_grid(family, learned_optimizer, grid_meta_params, task_keys, num_steps, final_batches):
    def run_tasks(meta_params):
        return jax.vmap(lambda k: _train_one(family, learned_optimizer, meta_params, k, num_steps, final_batches))(
            task_keys
        )

    return jax.vmap(run_tasks)(grid_meta_params)


def grid_curves(
    family: TaskFamily,
    learned_optimizer: Any,
    grid_meta_params: Any,
    task_keys: Array,
    num_steps: int,
    final_batches: int = 8,
) -> Curves:
    """Trains one task per key for every meta-params on the leading axis of `grid_meta_params`: arrays [grid, tasks, ...]."""
    losses, final, normalized = _run_grid(family, learned_optimizer, grid_meta_params, task_keys, num_steps, final_batches)
    return Curves(np.asarray(losses), np.asarray(final), np.asarray(normalized))


def train_curves(
    family: TaskFamily,
    learned_optimizer: Any,
    meta_params: Any,
    task_keys: Array,
    num_steps: int,
    final_batches: int = 8,
) -> Curves:
    """Trains one task per key with the optimizer at `meta_params` and returns its curves and final losses."""
    grid = jax.tree.map(lambda x: jnp.asarray(x)[None], meta_params)
    curves = grid_curves(family, learned_optimizer, grid, task_keys, num_steps, final_batches)
    return Curves(*(x[0] for x in curves))


def tuned_baseline_curves(
    family: TaskFamily,
    baseline: Any,
    learning_rates: Sequence[float],
    task_keys: Array,
    num_steps: int,
    final_batches: int = 8,
) -> Dict[str, Any]:
    """Trains every task at every learning rate and keeps, per task, the rate with the lowest final loss."""
    grid = jax.tree.map(
        lambda *xs: jnp.stack(xs), *[baseline.with_learning_rate(None, lr) for lr in learning_rates]
    )
    per_rate = grid_curves(family, baseline, grid, task_keys, num_steps, final_batches)
    finals = np.where(np.isfinite(per_rate.final_losses), per_rate.final_losses, np.inf)  # [rates, tasks]
    best = np.argmin(finals, axis=0)
    tasks_index = np.arange(finals.shape[1])
    curves = Curves(*(x[best, tasks_index] for x in per_rate))
    chosen = [float(learning_rates[i]) for i in best]
    edge = int(np.sum((best == 0) | (best == len(learning_rates) - 1)))
    return {"curves": curves, "learning_rates": chosen, "num_at_grid_edge": edge}


def first_step_reaching(curve: np.ndarray, target: float, window: int = 10) -> int:
    """Returns the first step where the running mean (over `window` steps) of `curve` is <= `target`, or -1."""
    if curve.shape[0] < window:
        window = 1
    smoothed = np.convolve(curve, np.ones(window) / window, mode="valid")
    hits = np.nonzero(smoothed <= target)[0]
    return int(hits[0] + window) if hits.size else -1


def geometric_mean(values: np.ndarray) -> float:
    """Returns the geometric mean of positive values (inf if any is not finite)."""
    values = np.asarray(values, np.float64)
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        return float("inf")
    return float(np.exp(np.mean(np.log(values))))
