"""Task augmentation by weight reparameterisation (Celo): `reparameterize(family, levels=..., ranges=...)`.

A reparameterised task evaluates its base task's loss at `w * s` and starts from the base
initial weights divided by `s`, so it computes the same function from the same starting
point, but its gradients are `s` times the base gradients at the same function and a step
of size `d` in `w` moves the base weights by `s * d`. A learned optimizer meta-trained on
such tasks cannot rely on weights and gradients having one typical scale.

The scale `s` is log-uniform in one of the ranges `RANGES` (1e-3..1e3, 1e-2..1e2, 1e-1..1e1)
and is drawn at one of the levels `LEVELS`: one scale for the whole model (`global`), one per
tensor (`tensor`), one per parameter (`parameter`), or `s = 1` (`none`). Each sampled task
draws its level and range uniformly from the allowed ones, then its scales. The scales are
part of the task configuration (a pytree shaped like the params, computed once per task in
`sample`), so a batch of tasks with different levels vmaps and shapes stay static.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp

from tasks.base import Array, Batch, Params, Task, TaskError, TaskFamily

LEVELS: Tuple[str, ...] = ("none", "global", "tensor", "parameter")
RANGES: Dict[str, float] = {"1e-3..1e3": 1e3, "1e-2..1e2": 1e2, "1e-1..1e1": 1e1}


class ReparameterizedConfig(NamedTuple):
    """One reparameterised task: the base task's config, the level and range drawn, and the scales."""

    base: Any
    level: Array  # int32 index into LEVELS
    scale_range: Array  # int32 index into tuple(RANGES)
    scales: Params  # float, shaped like the base task's params


def check_choices(levels: Sequence[str], ranges: Sequence[str]) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """Returns `levels` and `ranges` as tuples if each is a non-empty list of known names, else raises TaskError."""
    if isinstance(levels, str) or isinstance(ranges, str):
        raise TaskError(f"reparameterize levels and ranges must be lists of names, got {levels!r} and {ranges!r}")
    levels, ranges = tuple(levels), tuple(ranges)
    unknown_levels = [name for name in levels if name not in LEVELS]
    if unknown_levels or not levels:
        raise TaskError(f"reparameterize levels must be a non-empty subset of {', '.join(LEVELS)}; got {levels}")
    unknown_ranges = [name for name in ranges if name not in RANGES]
    if unknown_ranges or not ranges:
        raise TaskError(f"reparameterize ranges must be a non-empty subset of {', '.join(RANGES)}; got {ranges}")
    if len(set(levels)) < len(levels) or len(set(ranges)) < len(ranges):
        raise TaskError(f"reparameterize levels and ranges must not repeat a name; got {levels} and {ranges}")
    return levels, ranges


class ReparameterizedTask(Task):
    """The base task with its loss evaluated at `params * scales` and its init divided by `scales`."""

    def __init__(self, base_task: Task, scales: Params):
        self.base_task = base_task
        self.scales = scales
        self.name = base_task.name

    def base_params(self, params: Params) -> Params:
        """Returns the base task's weights that `params` stand for: `params * scales`."""
        return jax.tree.map(lambda w, s: w * s, params, self.scales)

    def init(self, key: Array) -> Params:
        """Returns the base task's initial weights divided by the scales."""
        return jax.tree.map(lambda w, s: w / s, self.base_task.init(key), self.scales)

    def loss(self, params: Params, key: Array, batch: Batch) -> Array:
        """Returns the base task's loss at `params * scales`."""
        return self.base_task.loss(self.base_params(params), key, batch)

    def sample_batch(self, key: Array, split: str) -> Batch:
        """Returns the base task's batch."""
        return self.base_task.sample_batch(key, split)

    def normalizer(self, loss: Array) -> Array:
        """Returns the base task's normalised loss (the function, and so the loss scale, is unchanged)."""
        return self.base_task.normalizer(loss)

    def domain_features(self) -> Optional[Array]:
        """Returns the base task's domain vector (reparameterisation does not change the problem)."""
        return self.base_task.domain_features()


class ReparameterizedFamily(TaskFamily):
    """A family whose tasks are its base family's tasks under a sampled weight reparameterisation.

    The base family is its one data field (a pytree, so its datasets stay leaves); the allowed
    levels and ranges are static.
    """

    data_fields = ("base",)

    def __init__(self, base: TaskFamily, levels: Sequence[str] = LEVELS, ranges: Sequence[str] = tuple(RANGES)):
        if not isinstance(base, TaskFamily):
            raise TaskError(f"reparameterize expects a TaskFamily, got {type(base).__name__}")
        self.base = base
        self.levels, self.ranges = check_choices(levels, ranges)

    @property
    def name(self) -> str:
        """The base family's name with a `reparameterized_` prefix."""
        return f"reparameterized_{self.base.name}"

    def sample(self, key: Array) -> ReparameterizedConfig:
        """Samples a base task, a level and a range (uniformly over the allowed ones) and that task's scales."""
        base_key, level_key, range_key, scale_key = jax.random.split(key, 4)
        base_cfg = self.base.sample(base_key)
        level_codes = jnp.asarray([LEVELS.index(name) for name in self.levels], jnp.int32)
        range_codes = jnp.asarray([tuple(RANGES).index(name) for name in self.ranges], jnp.int32)
        level = level_codes[jax.random.randint(level_key, (), 0, len(self.levels))]
        range_code = range_codes[jax.random.randint(range_key, (), 0, len(self.ranges))]
        param_shapes = jax.eval_shape(lambda family, cfg, k: family.task(cfg).init(k), self.base, base_cfg, key)
        scales = self._draw_scales(param_shapes, level, range_code, scale_key)
        return ReparameterizedConfig(base_cfg, level, range_code, scales)

    def _draw_scales(self, param_shapes: Any, level: Array, range_code: Array, key: Array) -> Params:
        leaves, treedef = jax.tree.flatten(param_shapes)
        global_key, *leaf_keys = jax.random.split(key, len(leaves) + 1)
        log_max_scale = log_max_scale_of(range_code)
        global_draw = jax.random.uniform(global_key, (), jnp.float32, -1.0, 1.0)
        scales = []
        for leaf, leaf_key in zip(leaves, leaf_keys):
            tensor_key, parameter_key = jax.random.split(leaf_key)
            draws = {"none": jnp.zeros((), jnp.float32), "global": global_draw,
                     "tensor": jax.random.uniform(tensor_key, (), jnp.float32, -1.0, 1.0)}
            if "parameter" in self.levels:
                draws["parameter"] = jax.random.uniform(parameter_key, leaf.shape, jnp.float32, -1.0, 1.0)
            exponent = jnp.zeros(leaf.shape, jnp.float32)
            for name in self.levels:
                exponent = jnp.where(level == LEVELS.index(name), draws[name], exponent)
            scales.append(jnp.exp(exponent * log_max_scale).astype(leaf.dtype))
        return jax.tree.unflatten(treedef, scales)

    def task(self, cfg: ReparameterizedConfig) -> ReparameterizedTask:
        """Builds the reparameterised task described by `cfg` (its leaves may be tracers)."""
        chex.assert_rank([cfg.level, cfg.scale_range], 0)
        return ReparameterizedTask(self.base.task(cfg.base), cfg.scales)


def log_max_scale_of(range_code: Array) -> Array:
    """Returns the log of the largest scale of the range with index `range_code` in `RANGES`."""
    return jnp.log(jnp.asarray(list(RANGES.values()), jnp.float32))[range_code]


def reparameterize(
    family: TaskFamily, levels: Sequence[str] = LEVELS, ranges: Sequence[str] = tuple(RANGES)
) -> ReparameterizedFamily:
    """Returns `family` with Celo's task augmentation: each task's weights reparameterised at a sampled level and range."""
    return ReparameterizedFamily(family, levels, ranges)
