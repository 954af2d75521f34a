"""Persistent Evolution Strategies (Vicol et al. 2021): unbiased meta-gradients from truncated unrolls."""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from meta_train.estimator import Estimator
from meta_train.registry import register_estimator
from meta_train.unroll import TaskState, TruncatedUnroll, truncation_metrics

Array = jax.Array


class PESState(NamedTuple):
    """Inner runs of every task (two antithetic particles each) and the perturbations applied so far in each run."""

    tasks: TaskState
    accumulator: Any


def antithetic_particles(meta_params: Any, perturbations: Any) -> Any:
    """Returns meta-params of shape [tasks, 2, ...]: theta + eps and theta - eps for every task."""
    return jax.tree.map(
        lambda theta, eps: jnp.stack([theta + eps, theta - eps], axis=1), meta_params, perturbations
    )


def sample_perturbations(meta_params: Any, key: Array, num_tasks: int, std: float) -> Any:
    """Returns Gaussian perturbations with standard deviation `std`, one per task, shaped like meta_params."""
    leaves, treedef = jax.tree.flatten(meta_params)
    sizes = [int(np.prod(jnp.shape(x))) for x in leaves]
    # One draw for all leaves: every random.normal call site compiles its own threefry and erf_inv code.
    draws = std * jax.random.normal(key, (num_tasks, sum(sizes)), jnp.float32)
    offsets = np.cumsum([0] + sizes)
    noise = [
        draws[:, offsets[i]:offsets[i + 1]].reshape((num_tasks,) + jnp.shape(x)).astype(jnp.result_type(x))
        for i, x in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, noise)


def split_by_first_reset(step_values: Array, resets: Array) -> Tuple[Array, Array]:
    """Sums per-step values [tasks, steps] separately over steps before and after each task's first restart.

    A restart flagged at step s happens after step s's loss, so step s still belongs to the old run.
    """
    resets = resets.astype(jnp.int32)
    resets_before = jnp.cumsum(resets, axis=1) - resets
    in_old_run = resets_before == 0
    return jnp.sum(jnp.where(in_old_run, step_values, 0.0), axis=1), jnp.sum(
        jnp.where(in_old_run, 0.0, step_values), axis=1
    )


@register_estimator("pes")
class PES(Estimator):
    """Antithetic PES. Each task keeps the sum of perturbations applied in its current inner run.

    Per truncation: g = mean_tasks((L+ - L-) * accumulator) / (2 std^2), where the loss
    difference of steps before a restart is weighted by the old accumulator plus this
    truncation's perturbation and that of steps after it by the perturbation alone.
    """

    num_particles = 2

    def __init__(self, num_tasks: int = 8, trunc_length: int = 20, std: float = 0.01, task_map: str = "vmap"):
        if int(num_tasks) < 1 or int(trunc_length) < 1 or not float(std) > 0:
            raise ValueError(
                f"PES needs num_tasks >= 1, trunc_length >= 1 and std > 0; got {num_tasks}, {trunc_length}, {std}"
            )
        self.num_tasks, self.trunc_length, self.std = int(num_tasks), int(trunc_length), float(std)
        self.task_map = task_map

    def init(self, unroll: TruncatedUnroll, meta_params: Any, key: Array) -> PESState:
        """Starts every task's inner run and zeroes the accumulators."""
        zeros = jax.tree.map(lambda x: jnp.zeros((self.num_tasks,) + jnp.shape(x), jnp.result_type(x)), meta_params)
        particles = antithetic_particles(meta_params, zeros)
        tasks = jax.vmap(unroll.init_task)(particles, jax.random.split(key, self.num_tasks))
        return PESState(tasks=tasks, accumulator=zeros)

    def estimate(
        self, unroll: TruncatedUnroll, meta_params: Any, state: PESState, key: Array, mask: Any = None
    ) -> Tuple[Any, PESState, Dict[str, Array]]:
        """Runs one truncation of every task at theta +- eps and returns the PES meta-gradient."""
        noise_key, unroll_key = jax.random.split(key)
        eps = sample_perturbations(meta_params, noise_key, self.num_tasks, self.std)
        if mask is not None:
            eps = jax.tree.map(lambda e, m: e * m.astype(e.dtype), eps, mask)
        particles = antithetic_particles(meta_params, eps)

        def run(task_unroll, theta, task_state, task_key):
            return task_unroll.truncation(theta, task_state, task_key, self.trunc_length)

        task_keys = jax.random.split(unroll_key, self.num_tasks)
        tasks, result = unroll.map_tasks(run, self.task_map)(particles, state.tasks, task_keys)

        loss_difference = (result.meta_losses[..., 0] - result.meta_losses[..., 1]) / self.trunc_length
        old_run_diff, new_run_diff = split_by_first_reset(loss_difference, result.resets)
        accumulated = jax.tree.map(jnp.add, state.accumulator, eps)
        scale = 1.0 / (2.0 * self.std**2)

        def task_mean_gradient(acc, e):
            shape = (self.num_tasks,) + (1,) * (acc.ndim - 1)
            per_task = old_run_diff.reshape(shape) * acc + new_run_diff.reshape(shape) * e
            return jnp.mean(per_task, axis=0) * scale

        gradient = jax.tree.map(task_mean_gradient, accumulated, eps)
        restarted = jnp.any(result.resets, axis=1)
        accumulator = jax.tree.map(
            lambda acc, e: jnp.where(restarted.reshape((-1,) + (1,) * (acc.ndim - 1)), e, acc), accumulated, eps
        )
        metrics = truncation_metrics(result, jnp.mean(result.meta_losses))
        return gradient, PESState(tasks=tasks, accumulator=accumulator), metrics
