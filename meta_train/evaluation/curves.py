"""Evaluation of optimizers on held-out tasks: training curves, final losses and per-task learning-rate tuning."""

from __future__ import annotations

import functools
from typing import Any, Dict, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import update_arguments
from tasks.base import TaskFamily

Array = jax.Array

HELD_OUT_OFFSET = 1_000_003

class Curves(NamedTuple):
    """Training losses [tasks, steps] and final losses [tasks], raw and normalised; validation losses if asked for.

    `valid_losses` [tasks, evaluations] are taken at `validation_steps(num_steps, valid_every)`
    (empty when `valid_every` is 0); `final_valid_losses` [tasks] average `final_batches` validation batches.
    """

    train_losses: np.ndarray
    final_losses: np.ndarray
    final_normalized: np.ndarray
    valid_losses: Optional[np.ndarray] = None
    final_valid_losses: Optional[np.ndarray] = None


def held_out_task_keys(seed: int, num_tasks: int) -> Array:
    """Returns keys of evaluation tasks; derived from a stream the meta-trainer never draws from."""
    base = jax.random.fold_in(jax.random.key(seed), HELD_OUT_OFFSET)
    return jax.random.split(base, num_tasks)


def validation_steps(num_steps: int, valid_every: int) -> np.ndarray:
    """Returns the inner steps after which validation losses are taken: 0, k, 2k, ... and the last step (the final validation loss)."""
    if valid_every <= 0:
        return np.zeros((0,), np.int64)
    steps = list(range(0, num_steps + 1, valid_every))
    if steps[-1] != num_steps:
        steps.append(num_steps)
    return np.asarray(steps, np.int64)


def run_keys_for_seed(task_keys: Array, seed: int) -> Array:
    """Returns the keys for init, batches and final losses of each task under `seed` (seed 0: the task keys)."""
    if seed == 0:
        return task_keys
    return jax.vmap(lambda key: jax.random.fold_in(key, seed))(task_keys)


def _mean_loss(task: Any, params: Any, key: Array, split: str, count: int) -> Array:
    def one(batch_key):
        loss_key, sample_key = jax.random.split(batch_key)
        return task.loss(params, loss_key, task.sample_batch(sample_key, split))

    return jnp.mean(jax.vmap(one)(jax.random.split(key, count)))


def _train_one(family: TaskFamily, learned_optimizer: Any, meta_params: Any, task_key: Array, run_key: Array,
               num_steps: int, final_batches: int, valid_every: int, valid_batches: int):
    cfg_key = jax.random.split(task_key, 4)[0]
    _, init_key, steps_key, final_key = jax.random.split(run_key, 4)
    task = family.task(family.sample(cfg_key))
    params = task.init(init_key)
    transformation = learned_optimizer.transformation(meta_params, num_steps=num_steps)
    opt_state = transformation.init(params)
    # Averaging optimizers (schedule-free) take gradients at one point and are judged at another.
    averaged = getattr(learned_optimizer, "evaluation_params", None)

    def judged(carry):
        params, opt_state = carry
        return params if averaged is None else averaged(opt_state, params)

    def step(carry, step_key):
        params, opt_state = carry
        batch_key, loss_key = jax.random.split(step_key)
        batch = task.sample_batch(batch_key, "train")
        loss, grads, update_args = update_arguments.loss_gradient_and_update_args(
            learned_optimizer, lambda p: task.loss(p, loss_key, batch), params,
            probe_key=jax.random.fold_in(loss_key, update_arguments.PROBE_SALT),
            domain_features=getattr(task, "domain_features", None))
        recorded = loss if averaged is None else task.loss(judged(carry), loss_key, batch)
        updates, opt_state = transformation.update(grads, opt_state, params, **update_args)
        return (optax.apply_updates(params, updates), opt_state), recorded

    carry = (params, opt_state)
    step_keys = jax.random.split(steps_key, num_steps)
    if valid_every > 0:
        chunks = -(-num_steps // valid_every)
        padded = jnp.concatenate([step_keys, step_keys[: chunks * valid_every - num_steps]])
        chunk_keys = padded.reshape(chunks, valid_every)
        active = (jnp.arange(chunks * valid_every) < num_steps).reshape(chunks, valid_every)

        def masked_step(carry, xs):
            step_key, on = xs
            stepped, loss = step(carry, step_key)
            return jax.tree.map(lambda new, old: jnp.where(on, new, old), stepped, carry), loss

        def chunk(carry, xs):
            keys, on, valid_key = xs
            valid = _mean_loss(task, judged(carry), valid_key, "valid", valid_batches)
            carry, losses = jax.lax.scan(masked_step, carry, (keys, on))
            return carry, (losses, valid)

        valid_keys = jax.random.split(jax.random.fold_in(run_key, 1), chunks)
        carry, (losses, valid) = jax.lax.scan(chunk, carry, (chunk_keys, active, valid_keys))
        losses = losses.reshape(-1)[:num_steps]
    else:
        carry, losses = jax.lax.scan(step, carry, step_keys)
        valid = jnp.zeros((0,), jnp.float32)
    params = judged(carry)
    final = _mean_loss(task, params, final_key, "train", final_batches)
    final_valid = _mean_loss(task, params, jax.random.fold_in(run_key, 2), "valid", final_batches)
    valid_losses = jnp.concatenate([valid, final_valid[None]]) if valid_every > 0 else valid
    return losses, final, task.normalizer(final), valid_losses, final_valid


@functools.partial(
    jax.jit, static_argnames=("learned_optimizer", "num_steps", "final_batches", "valid_every", "valid_batches")
)
def _run_grid(family, learned_optimizer, grid_meta_params, task_keys, run_keys, num_steps, final_batches,
              valid_every, valid_batches):
    def run_tasks(meta_params):
        return jax.vmap(
            lambda k, r: _train_one(family, learned_optimizer, meta_params, k, r, num_steps, final_batches,
                                    valid_every, valid_batches)
        )(task_keys, run_keys)

    return jax.vmap(run_tasks)(grid_meta_params)


def grid_curves(
    family: TaskFamily,
    learned_optimizer: Any,
    grid_meta_params: Any,
    task_keys: Array,
    num_steps: int,
    final_batches: int = 8,
    *,
    seed: int = 0,
    valid_every: int = 0,
    valid_batches: int = 4,
) -> Curves:
    """Trains one task per key for every meta-params on the leading axis of `grid_meta_params`: arrays [grid, tasks, ...].

    `seed` changes the initialisation and batches but not the task; `valid_every` > 0 also
    records the mean loss over `valid_batches` validation batches every `valid_every` steps.
    An optimizer with an `evaluation_params(opt_state, params)` method (schedule-free AdamW)
    has every recorded loss taken there; its gradients stay at its own parameters.
    """
    run_keys = run_keys_for_seed(task_keys, seed)
    outputs = _run_grid(family, learned_optimizer, grid_meta_params, task_keys, run_keys, num_steps, final_batches,
                        valid_every, valid_batches)
    return Curves(*(np.asarray(x) for x in outputs))


def train_curves(
    family: TaskFamily,
    learned_optimizer: Any,
    meta_params: Any,
    task_keys: Array,
    num_steps: int,
    final_batches: int = 8,
    **options: Any,
) -> Curves:
    """Trains one task per key with the optimizer at `meta_params` and returns its curves and final losses.

    `options` are grid_curves' keyword options (seed, valid_every, valid_batches).
    """
    grid = jax.tree.map(lambda x: jnp.asarray(x)[None], meta_params)
    curves = grid_curves(family, learned_optimizer, grid, task_keys, num_steps, final_batches, **options)
    return Curves(*(x[0] for x in curves))


class LearningRateSweep:
    """A loaded learned optimizer that takes a learning rate (a learned direction the user scales), presented like a
    hand-designed baseline so its learning rate can be tuned per task over the same grid.

    Its meta-params are `{"theta": the trained meta-params, "learning_rate": scalar}`; the optimizer's
    `optimizer(theta, num_steps=..., learning_rate=...)` must accept a traced learning rate.
    """

    def __init__(self, loaded: Any):
        self.loaded = loaded

    @staticmethod
    def accepts(loaded: Any) -> bool:
        """Returns whether `loaded` (a LoadedOptimizer) takes a learning rate that a sweep can replace."""
        return "learning_rate" in loaded.config

    def with_learning_rate(self, meta_params: Any, learning_rate: Any) -> Any:
        """Returns the trained meta-params paired with `learning_rate`."""
        del meta_params
        return {"theta": self.loaded.meta_params, "learning_rate": jnp.asarray(learning_rate, jnp.float32)}

    def transformation(self, meta_params: Any, *, num_steps: Any = None) -> Any:
        """Returns the learned optimizer's transformation at the paired learning rate."""
        return self.loaded.optimizer.transformation(meta_params["theta"], num_steps=num_steps,
                                                    learning_rate=meta_params["learning_rate"])


def learning_rate_grid(baseline: Any, learning_rates: Sequence[float]) -> Any:
    """Returns the baseline's meta-params for every learning rate, stacked on a leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *[baseline.with_learning_rate(None, lr) for lr in learning_rates])


def best_rate_per_task(final_losses: np.ndarray) -> np.ndarray:
    """Returns, per task, the grid index with the lowest final loss: [rates, tasks] or [seeds, rates, tasks] (mean over seeds)."""
    finals = np.asarray(final_losses, np.float64)
    finals = np.where(np.isfinite(finals), finals, np.inf)
    if finals.ndim == 3:
        finals = np.mean(finals, axis=0)
    return np.argmin(finals, axis=0)


def tuned_baseline_curves(
    family: TaskFamily,
    baseline: Any,
    learning_rates: Sequence[float],
    task_keys: Array,
    num_steps: int,
    final_batches: int = 8,
    **options: Any,
) -> Dict[str, Any]:
    """Trains every task at every learning rate and keeps, per task, the rate with the lowest final loss.

    `options` are grid_curves' keyword options (seed, valid_every, valid_batches).
    """
    per_rate = grid_curves(family, baseline, learning_rate_grid(baseline, learning_rates), task_keys, num_steps,
                           final_batches, **options)
    best = best_rate_per_task(per_rate.final_losses)
    tasks_index = np.arange(best.shape[0])
    curves = Curves(*(x[best, tasks_index] for x in per_rate))
    chosen = [float(learning_rates[i]) for i in best]
    edge = int(np.sum((best == 0) | (best == len(learning_rates) - 1)))
    return {"curves": curves, "learning_rates": chosen, "num_at_grid_edge": edge}
