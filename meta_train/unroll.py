"""Truncated inner training: a batch of tasks, each run by several particles (perturbed meta-params).

A task's particles share its configuration, data, keys, step counter and horizon and differ
only in their meta-parameters, which is what antithetic estimators need. Each inner run
restarts with a new task and fresh parameters when its horizon is reached or when it
diverges.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from lopt import update_arguments
from meta_train.horizons import Horizon
from meta_train.parallel import TaskParallelism
from tasks.base import TaskFamily

Array = jax.Array

META_LOSS_KINDS = ("train", "valid")


class TaskState(NamedTuple):
    """The state of one task's inner runs; `params` and `opt_state` carry a leading particle axis."""

    cfg: Any
    params: Any
    opt_state: Any
    step: Array
    horizon: Array


class TruncationResult(NamedTuple):
    """Per-step outputs of one truncation for one task: losses are [steps, particles].

    `normalized_losses` are before clipping (NaN where not finite); `clipped` counts the finite
    ones above `max_meta_loss`, which the meta-loss replaces by that constant. `log_probs`
    [steps, particles] are the log-densities of the sampled actions when the truncation ran the
    optimizer as a Gaussian policy (`action_std` given), else None.
    """

    meta_losses: Array
    raw_losses: Array
    resets: Array
    nonfinite: Array
    normalized_losses: Array
    clipped: Array
    log_probs: Optional[Array] = None


def _where_tree(condition: Array, on_true: Any, on_false: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)


def gaussian_policy_action(mean_updates: Any, std: Array, key: Array) -> Tuple[Any, Array]:
    """Returns (action, log-density): the action `mean_updates + std * noise` is held constant for autodiff,
    while its log-density under N(mean_updates, std^2 I) stays differentiable in the mean and std."""
    leaves, treedef = jax.tree.flatten(mean_updates)
    keys = jax.random.split(key, len(leaves))
    actions, log_prob = [], jnp.zeros((), jnp.float32)
    for leaf_key, mean in zip(keys, leaves):
        mean32 = mean.astype(jnp.float32)
        action = jax.lax.stop_gradient(mean32 + std * jax.random.normal(leaf_key, mean.shape, jnp.float32))
        standardized = (action - mean32) / std
        log_prob = log_prob + jnp.sum(-0.5 * jnp.square(standardized) - jnp.log(std) - 0.5 * math.log(2 * math.pi))
        actions.append(action.astype(mean.dtype))
    return jax.tree.unflatten(treedef, actions), log_prob


def _tree_all_finite(tree: Any) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


class TruncatedUnroll:
    """Runs truncations of inner training for one task family and one learned optimizer.

    Attributes are static choices; `family` may be a traced pytree (it is passed into jit).
    `max_meta_loss` is the value a non-finite or exploding normalised loss is clipped to.
    """

    def __init__(
        self,
        family: TaskFamily,
        learned_optimizer: Any,
        horizon: Horizon,
        meta_loss: str = "train",
        max_meta_loss: float = 10.0,
        parallelism: Optional[TaskParallelism] = None,
    ):
        if meta_loss not in META_LOSS_KINDS:
            raise ValueError(f"meta_loss must be one of {META_LOSS_KINDS}, got {meta_loss!r}")
        self.family = family
        self.learned_optimizer = learned_optimizer
        self.horizon = horizon
        self.meta_loss = meta_loss
        self.max_meta_loss = float(max_meta_loss)
        self.parallelism = parallelism or TaskParallelism()

    def fresh_state(self, particle_meta_params: Any, key: Array, first: bool = False) -> TaskState:
        """Returns a new inner run: a sampled task, initial params copied to every particle, step 0."""
        cfg_key, init_key, horizon_key = jax.random.split(key, 3)
        cfg = self.family.sample(cfg_key)
        task = self.family.task(cfg)
        params = task.init(init_key)
        horizon = (self.horizon.sample_first if first else self.horizon.sample)(horizon_key)
        num_particles = jax.tree.leaves(particle_meta_params)[0].shape[0]

        def init_opt_state(theta):
            return self.learned_optimizer.transformation(theta, num_steps=horizon).init(params)

        opt_state = jax.vmap(init_opt_state)(particle_meta_params)
        stacked_params = jax.tree.map(lambda p: jnp.broadcast_to(p, (num_particles,) + p.shape), params)
        return TaskState(cfg, stacked_params, opt_state, jnp.zeros((), jnp.int32), horizon)

    def init_task(self, particle_meta_params: Any, key: Array) -> TaskState:
        """Returns a task's first inner run, with a shortened random horizon to stagger restarts."""
        return self.fresh_state(particle_meta_params, key, first=True)

    def truncation(self, particle_meta_params: Any, state: TaskState, key: Array, num_steps: int,
                   action_std: Optional[Array] = None):
        """Advances one task's particles by `num_steps` inner steps; returns (new state, TruncationResult).

        With `action_std` (a scalar) the optimizer runs as a Gaussian policy: each particle applies
        its update plus its own noise of that standard deviation, the parameters are not
        differentiated through, and the result holds each action's log-density (differentiable).
        """
        fresh_key, steps_key = jax.random.split(key)
        fresh = self.fresh_state(particle_meta_params, fresh_key)
        num_particles = jax.tree.leaves(particle_meta_params)[0].shape[0]

        def one_step(state: TaskState, step_key: Array):
            task = self.family.task(state.cfg)
            batch_key, loss_key, valid_key = jax.random.split(step_key, 3)
            batch = task.sample_batch(batch_key, "train")
            valid_batch = task.sample_batch(valid_key, "valid") if self.meta_loss == "valid" else None
            noise_keys = None if action_std is None else jax.random.split(
                jax.random.fold_in(step_key, 1), num_particles)

            def particle_step(theta, params, opt_state, noise_key):
                transformation = self.learned_optimizer.transformation(theta, num_steps=state.horizon)
                loss, grads, update_args = update_arguments.loss_gradient_and_update_args(
                    self.learned_optimizer, lambda p: task.loss(p, loss_key, batch), params,
                    probe_key=jax.random.fold_in(loss_key, update_arguments.PROBE_SALT),
                    domain_features=getattr(task, "domain_features", None))
                updates, opt_state = transformation.update(grads, opt_state, params, **update_args)
                log_prob = None
                if action_std is not None:
                    updates, log_prob = gaussian_policy_action(updates, action_std, noise_key)
                params = optax.apply_updates(params, updates)
                if self.meta_loss == "valid":
                    meta_loss = task.normalizer(task.loss(params, loss_key, valid_batch))
                else:
                    meta_loss = task.normalizer(loss)
                return params, opt_state, loss, meta_loss, log_prob

            params, opt_state, raw_loss, meta_loss, log_prob = jax.vmap(particle_step)(
                particle_meta_params, state.params, state.opt_state, noise_keys
            )
            finite = jnp.isfinite(meta_loss) & jnp.isfinite(raw_loss)
            bounded = jnp.where(finite, jnp.minimum(meta_loss, self.max_meta_loss), self.max_meta_loss)
            num_clipped = jnp.sum(finite & (meta_loss > self.max_meta_loss)).astype(jnp.int32)
            diverged = ~jnp.all(finite) | ~_tree_all_finite(params)
            step = state.step + 1
            reset = (step >= state.horizon) | diverged
            stepped = TaskState(state.cfg, params, opt_state, step, state.horizon)
            new_state = _where_tree(reset, fresh, stepped)
            nonfinite = jnp.sum(~finite).astype(jnp.int32)
            normalized = jnp.where(finite, meta_loss, jnp.nan)
            return new_state, TruncationResult(bounded, raw_loss, reset, nonfinite, normalized, num_clipped, log_prob)

        step_keys = jax.random.split(steps_key, num_steps)
        return jax.lax.scan(one_step, state, step_keys)


    def with_family(self, family: TaskFamily) -> "TruncatedUnroll":
        """Returns this unroll for another (e.g. per-device) copy of the family."""
        return TruncatedUnroll(
            family, self.learned_optimizer, self.horizon, self.meta_loss, self.max_meta_loss, self.parallelism
        )

    def map_tasks(self, fn, task_map: str):
        """Returns `fn(unroll, *task_args)` applied over the leading task axis of task_args, spread over devices.

        The family travels into each device's program as an explicit replicated argument.
        """

        def per_device(family, *args):
            unroll = self.with_family(family)
            return map_over_tasks(lambda *a: fn(unroll, *a), task_map)(*args)

        spread = self.parallelism.over_tasks(per_device)
        return lambda *args: spread(self.family, *args)


def truncation_metrics(result: TruncationResult, meta_loss: Array, resets: Array = None) -> dict:
    """Returns the scalar metrics every estimator reports for a batch of truncations."""
    resets = result.resets if resets is None else resets
    return {
        "meta_loss": meta_loss,
        "inner_loss": jnp.mean(jnp.where(jnp.isfinite(result.raw_losses), result.raw_losses, 0.0)),
        "num_nonfinite": jnp.sum(result.nonfinite),
        "num_restarts": jnp.sum(resets.astype(jnp.int32)),
        "num_clipped": jnp.sum(result.clipped),
        "median_normalized_loss": jnp.nanmedian(result.normalized_losses),
    }


def map_over_tasks(fn, task_map: str):
    """Returns `fn` applied over the leading task axis of all its arguments, by 'vmap' or 'map'."""
    if task_map == "vmap":
        return jax.vmap(fn)
    if task_map == "map":
        return lambda *args: jax.lax.map(lambda xs: fn(*xs), args)
    raise ValueError(f"task_map must be 'vmap' or 'map', got {task_map!r}")


def check_truncation(horizon: Horizon, num_steps: int) -> None:
    """Raises ValueError if a truncation could span more than one scheduled restart."""
    if num_steps < 1:
        raise ValueError(f"trunc_length must be >= 1, got {num_steps}")
    if horizon.min_length < num_steps:
        raise ValueError(
            f"horizon minimum ({horizon.min_length}) is shorter than trunc_length ({num_steps}); "
            "an inner run must last at least one truncation"
        )


def assert_task_batch(states: TaskState, num_tasks: int) -> None:
    """Asserts that every leaf of a batched TaskState has a leading axis of `num_tasks`."""
    chex.assert_tree_shape_prefix(states, (num_tasks,))
