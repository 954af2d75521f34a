"""Truncated backpropagation through time: the exact gradient of one truncation's meta-loss, biased across truncations.

Each task carries its inner run from truncation to truncation, but the meta-gradient flows
only through the current truncation: the state it starts from is treated as a constant, and
the state it ends in is returned with gradients stopped. When a truncation covers a whole
inner run this is the exact meta-gradient of that run; over longer runs it ignores the
effect of the meta-params on earlier truncations (short-horizon bias).
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Tuple

import jax
import jax.numpy as jnp

from meta_train.estimator import Estimator
from meta_train.registry import register_estimator
from meta_train.unroll import TaskState, TruncatedUnroll, map_over_tasks, truncation_metrics

Array = jax.Array


class TruncatedBackpropState(NamedTuple):
    """Inner runs of every task, with a particle axis of size 1."""

    tasks: TaskState


def single_particle(meta_params: Any, num_tasks: int) -> Any:
    """Returns meta_params broadcast to [tasks, 1, ...] (one particle per task), differentiably."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_tasks, 1) + jnp.shape(x)), meta_params)


@register_estimator("tbptt")
class TruncatedBackprop(Estimator):
    """Gradient of the mean meta-loss over one truncation of every task, by backpropagation through the unroll."""

    num_particles = 1

    def __init__(self, num_tasks: int = 8, trunc_length: int = 20, task_map: str = "vmap"):
        if int(num_tasks) < 1 or int(trunc_length) < 1:
            raise ValueError(f"TruncatedBackprop needs num_tasks >= 1 and trunc_length >= 1; got {num_tasks}, {trunc_length}")
        map_over_tasks(lambda x: x, task_map)
        self.num_tasks, self.trunc_length, self.task_map = int(num_tasks), int(trunc_length), task_map

    def init(self, unroll: TruncatedUnroll, meta_params: Any, key: Array) -> TruncatedBackpropState:
        """Starts every task's inner run."""
        particles = single_particle(meta_params, self.num_tasks)
        tasks = jax.vmap(unroll.init_task)(particles, jax.random.split(key, self.num_tasks))
        return TruncatedBackpropState(tasks=jax.lax.stop_gradient(tasks))

    def estimate(
        self, unroll: TruncatedUnroll, meta_params: Any, state: TruncatedBackpropState, key: Array, mask: Any = None
    ) -> Tuple[Any, TruncatedBackpropState, Dict[str, Array]]:
        """Runs one truncation of every task and returns the gradient of its mean meta-loss (zero where `mask` is 0)."""
        task_keys = jax.random.split(key, self.num_tasks)
        start = jax.lax.stop_gradient(state.tasks)

        def mean_meta_loss(theta):
            def run(task_unroll, particle_theta, task_state, task_key):
                return task_unroll.truncation(particle_theta, task_state, task_key, self.trunc_length)

            tasks, result = unroll.map_tasks(run, self.task_map)(single_particle(theta, self.num_tasks), start, task_keys)
            return jnp.mean(result.meta_losses), (tasks, result)

        (meta_loss, (tasks, result)), gradient = jax.value_and_grad(mean_meta_loss, has_aux=True)(meta_params)
        if mask is not None:
            gradient = jax.tree.map(lambda g, m: g * m.astype(g.dtype), gradient, mask)
        metrics = truncation_metrics(result, meta_loss)
        return gradient, TruncatedBackpropState(jax.lax.stop_gradient(tasks)), metrics
