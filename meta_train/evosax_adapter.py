"""Run evosax 0.3 strategies (PersistentES, Open_ES, SNES, ...) through ask/tell on our own unroll state.

evosax owns the search distribution; our unroll keeps every task's inner run and horizon.
Population members i and i + num_tasks train task i on the same data (an antithetic pair
for the antithetic strategies). The strategy's mean is set to the trainer's meta-params
before each ask, and its own optimizer is SGD with rate 1, so the mean's change is the
strategy's gradient: the adapter returns it as the meta-gradient and the trainer's
meta-optimizer applies it. Each member's fitness is its mean meta-loss over the truncation
minus the mean of its task's pair, which removes the differences between tasks (a baseline
that does not depend on the member's own perturbation) before evosax shapes the fitness.
For PersistentES, a task whose inner run restarted has its
perturbation accumulators reset to this truncation's perturbation; within that one
truncation evosax weights the whole loss by the old accumulator (a small bias that PES
proper avoids).
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Tuple

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from meta_train.estimator import Estimator
from meta_train.registry import register_estimator
from meta_train.unroll import TaskState, TruncatedUnroll, truncation_metrics

Array = jax.Array

STRATEGIES = ("PersistentES", "Open_ES", "SNES")


def strategy_class(name: str):
    """Returns the evosax strategy class `name`; evosax is imported here because importing it starts JAX's
    backend, which must wait until a multi-process run has called jax.distributed.initialize."""
    try:
        import evosax.algorithms
    except ImportError:
        raise ImportError(f"the evosax estimator ({name}) needs evosax: pip install \"lopt[evosax]\"") from None

    return getattr(evosax.algorithms, name)


class EvosaxState(NamedTuple):
    """The tasks' inner runs (task axis) and the evosax strategy state (replicated)."""

    tasks: TaskState
    strategy: Any


@register_estimator("evosax")
class EvosaxEstimator(Estimator):
    """Adapter running an evosax strategy with population 2 * num_tasks over truncated unrolls."""

    num_particles = 2

    def __init__(self, strategy: str = "PersistentES", num_tasks: int = 8, trunc_length: int = 20,
                 std: float = 0.01, task_map: str = "vmap"):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown evosax strategy {strategy!r}; supported: {', '.join(STRATEGIES)}")
        if int(num_tasks) < 1 or int(trunc_length) < 1 or not float(std) > 0:
            raise ValueError(f"evosax adapter needs num_tasks, trunc_length >= 1 and std > 0; "
                             f"got {num_tasks}, {trunc_length}, {std}")
        self.strategy_name, self.num_tasks, self.trunc_length = strategy, int(num_tasks), int(trunc_length)
        self.std, self.task_map = float(std), task_map

    def strategy(self, meta_params: Any):
        """Returns the evosax strategy object for meta-params shaped like `meta_params`."""
        cls = strategy_class(self.strategy_name)
        kwargs = {"population_size": 2 * self.num_tasks, "solution": meta_params, "optimizer": optax.sgd(1.0)}
        if self.strategy_name != "SNES":
            kwargs["std_schedule"] = optax.constant_schedule(self.std)
        return cls(**kwargs)

    def strategy_params(self, strategy):
        """Returns the strategy's params: PersistentES never resets on its own; SNES starts at `std`."""
        params = strategy.default_params
        if self.strategy_name == "PersistentES":
            params = params.replace(T=2**30, K=self.trunc_length)
        if self.strategy_name == "SNES":
            params = params.replace(std_init=jnp.asarray(self.std, jnp.float32))
        return params

    def sharding_prefix(self, by_task: Any, replicated: Any) -> Any:
        """Tasks are split over devices; the strategy state is replicated."""
        return EvosaxState(tasks=by_task, strategy=replicated)

    def init(self, unroll: TruncatedUnroll, meta_params: Any, key: Array) -> EvosaxState:
        """Starts every task's inner run and the strategy at mean = meta_params."""
        strategy_key, tasks_key = jax.random.split(key)
        strategy = self.strategy(meta_params)
        strategy_state = strategy.init(strategy_key, meta_params, self.strategy_params(strategy))
        particles = jax.tree.map(lambda x: jnp.broadcast_to(x, (self.num_tasks, 2) + jnp.shape(x)), meta_params)
        tasks = jax.vmap(unroll.init_task)(particles, jax.random.split(tasks_key, self.num_tasks))
        return EvosaxState(tasks=tasks, strategy=strategy_state)

    def estimate(
        self, unroll: TruncatedUnroll, meta_params: Any, state: EvosaxState, key: Array, mask: Any = None
    ) -> Tuple[Any, EvosaxState, Dict[str, Array]]:
        """One ask, one truncation of every task, one tell; returns the change of the strategy's mean."""
        ask_key, run_key, tell_key = jax.random.split(key, 3)
        strategy = self.strategy(meta_params)
        params = self.strategy_params(strategy)
        flat_mean = jax.flatten_util.ravel_pytree(meta_params)[0]
        strategy_state = state.strategy.replace(mean=flat_mean)
        population, strategy_state = strategy.ask(ask_key, strategy_state, params)
        if mask is not None:
            population = jax.tree.map(lambda p, m, t: t + (p - t) * m.astype(p.dtype), population, mask, meta_params)
        n = self.num_tasks
        particles = jax.tree.map(lambda x: jnp.stack([x[:n], x[n:]], axis=1), population)

        def run(task_unroll, theta, task_state, task_key):
            return task_unroll.truncation(theta, task_state, task_key, self.trunc_length)

        tasks, result = unroll.map_tasks(run, self.task_map)(particles, state.tasks, jax.random.split(run_key, n))
        per_member = result.meta_losses.mean(axis=1)  # [tasks, 2]
        per_member = per_member - jnp.mean(per_member, axis=1, keepdims=True)
        fitness = jnp.concatenate([per_member[:, 0], per_member[:, 1]])
        new_state, _ = strategy.tell(tell_key, population, fitness, strategy_state, params)
        if self.strategy_name == "PersistentES":
            restarted = jnp.tile(jnp.any(result.resets, axis=1), 2)[:, None]
            perturbation = jax.vmap(lambda p: jax.flatten_util.ravel_pytree(p)[0])(population) - flat_mean
            new_state = new_state.replace(pert_accum=jnp.where(restarted, perturbation, new_state.pert_accum))
        gradient = jax.flatten_util.ravel_pytree(meta_params)[1](flat_mean - new_state.mean)
        metrics = truncation_metrics(result, jnp.mean(result.meta_losses))
        return gradient, EvosaxState(tasks=tasks, strategy=new_state), metrics
