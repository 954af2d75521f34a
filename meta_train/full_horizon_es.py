"""Full-horizon ES: antithetic evolution strategies over whole inner runs started afresh every meta-step."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

from meta_train.estimator import Estimator
from meta_train.registry import register_estimator
from meta_train.pes import antithetic_particles, sample_perturbations
from meta_train.unroll import TruncatedUnroll, truncation_metrics

Array = jax.Array

LOSS_TYPES = ("mean", "last")


@register_estimator("full_horizon_es")
class FullHorizonES(Estimator):
    """Antithetic ES where each meta-step trains `num_tasks` new tasks for the whole horizon.

    The meta-loss of a run is the mean (`loss_type="mean"`) or the final (`"last"`) normalised
    loss. Unbiased for that objective, at the cost of a whole inner run per meta-step; needs a
    constant horizon equal to `horizon_length`.
    """

    num_particles = 2

    def __init__(
        self, num_tasks: int = 8, horizon_length: int = 100, std: float = 0.01, loss_type: str = "mean",
        task_map: str = "vmap",
    ):
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if int(num_tasks) < 1 or int(horizon_length) < 1 or not float(std) > 0:
            raise ValueError(
                f"full-horizon ES needs num_tasks >= 1, horizon_length >= 1, std > 0; got {num_tasks}, {horizon_length}, {std}"
            )
        self.num_tasks, self.trunc_length, self.std = int(num_tasks), int(horizon_length), float(std)
        self.loss_type, self.task_map = loss_type, task_map

    def init(self, unroll: TruncatedUnroll, meta_params: Any, key: Array) -> Array:
        """Checks the horizon; the state is only a per-task run counter (nothing persists between runs)."""
        if not unroll.horizon.min_length == unroll.horizon.max_length == self.trunc_length:
            raise ValueError(
                f"full-horizon ES needs a constant horizon of {self.trunc_length} steps, got {unroll.horizon!r}"
            )
        return jnp.zeros((self.num_tasks,), jnp.int32)

    def estimate(
        self, unroll: TruncatedUnroll, meta_params: Any, state: Array, key: Array, mask: Any = None
    ) -> Tuple[Any, Array, Dict[str, Array]]:
        """Trains fresh tasks at theta +- eps for the whole horizon and returns the ES meta-gradient."""
        noise_key, start_key, run_key = jax.random.split(key, 3)
        eps = sample_perturbations(meta_params, noise_key, self.num_tasks, self.std)
        if mask is not None:
            eps = jax.tree.map(lambda e, m: e * m.astype(e.dtype), eps, mask)
        particles = antithetic_particles(meta_params, eps)

        def run(task_unroll, theta, start, task_key):
            fresh = task_unroll.fresh_state(theta, start)
            return task_unroll.truncation(theta, fresh, task_key, self.trunc_length)

        start_keys = jax.random.split(start_key, self.num_tasks)
        run_keys = jax.random.split(run_key, self.num_tasks)
        _, result = unroll.map_tasks(run, self.task_map)(particles, start_keys, run_keys)
        losses = result.meta_losses.mean(axis=1) if self.loss_type == "mean" else result.meta_losses[:, -1]
        difference = losses[:, 0] - losses[:, 1]
        scale = 1.0 / (2.0 * self.std**2)
        gradient = jax.tree.map(
            lambda e: jnp.mean(difference.reshape((-1,) + (1,) * (e.ndim - 1)) * e, axis=0) * scale, eps
        )
        metrics = truncation_metrics(result, jnp.mean(losses), result.resets[:, :-1])
        return gradient, state + 1, metrics
