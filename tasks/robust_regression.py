"""Robust linear regression: the Geman-McClure loss on sampled data with outliers (Li & Malik 2016's non-convex class).

Each task is a data set drawn inside jit from its seed, never materialised outside it: example
i of a split is a pure function of (data seed, split, i). Inputs are x ~ N(0, I_dim); an inlier's
target is y = <w*, x> + b* + noise_std * z with w* ~ N(0, I_dim) and b* ~ N(0, 1) drawn from the
seed; each example is an outlier with the task's sampled probability (uniform in
[0, max_outlier_fraction]), and an outlier's target is outlier_scale * z' instead, unrelated to x.
Every batch is the whole split (`num_examples` examples in a fixed order), so a task's loss is a
deterministic function of its parameters, as in the paper.

Loss: the mean Geman-McClure penalty r^2 / (scale^2 + r^2) of the residuals r = y - <w, x> - b.
It lies in [0, 1) per example and flattens out for large residuals, so outliers pull little,
and it is non-convex. Normaliser: the loss itself (already on a 0-to-1 scale, about 0.7-0.9 at
initialisation).
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import chex
import jax
import jax.numpy as jnp

from tasks.base import Array, Task, TaskError, TaskFamily, check_split
from tasks.registry import register

Params = Dict[str, Array]
Batch = Tuple[Array, Array]
RobustRegressionConfig = Dict[str, Array]

_SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}


def geman_mcclure(residuals: Array, scale: float) -> Array:
    """Returns the Geman-McClure penalty r^2 / (scale^2 + r^2) of each residual."""
    squared = jnp.square(residuals)
    return squared / (scale**2 + squared)


class RobustRegressionTask(Task):
    """One robust-regression problem: weights w (dim,) and bias b fitted to one sampled data set."""

    name = "robust_linear_regression"

    def __init__(self, family: "RobustRegressionFamily", cfg: RobustRegressionConfig):
        self.dim = family.dim
        self.num_examples = family.num_examples
        self.noise_std = family.noise_std
        self.outlier_scale = family.outlier_scale
        self.scale = family.scale
        self.cfg = cfg

    def init(self, key: Array) -> Params:
        """Returns w ~ N(0, init_scale^2 I) and b ~ N(0, init_scale^2)."""
        draws = jax.random.normal(key, (self.dim + 1,), jnp.float32) * self.cfg["init_scale"]
        return {"w": draws[: self.dim], "b": draws[self.dim]}

    def sample_batch(self, key: Array, split: str) -> Batch:
        """Returns the whole split as (x float32 [num_examples, dim], y float32 [num_examples]); `key` is unused."""
        del key
        check_split(split)
        data_key = jax.random.key(self.cfg["data_seed"])
        model = jax.random.normal(data_key, (self.dim + 1,), jnp.float32)
        offset = 1 + _SPLIT_IDS[split] * self.num_examples
        example_ids = offset + jnp.arange(self.num_examples)
        return jax.vmap(lambda i: self._example(data_key, model, i))(example_ids)

    def _example(self, data_key: Array, model: Array, example_id: Array) -> Batch:
        # Features, inlier noise, outlier target and (through ndtr, N(0, 1) -> U(0, 1)) the outlier draw at once.
        draws = jax.random.normal(jax.random.fold_in(data_key, example_id), (self.dim + 3,), jnp.float32)
        x, noise, wild, outlier_draw = draws[: self.dim], draws[self.dim], draws[self.dim + 1], draws[self.dim + 2]
        inlier = jnp.dot(model[: self.dim], x) + model[self.dim] + self.noise_std * noise
        is_outlier = jax.scipy.special.ndtr(outlier_draw) < self.cfg["outlier_fraction"]
        return x, jnp.where(is_outlier, self.outlier_scale * wild, inlier)

    def loss(self, params: Params, key: Array, batch: Batch) -> Array:
        """Returns the mean Geman-McClure penalty of the residuals on `batch` (float32)."""
        del key
        x, y = batch
        chex.assert_shape(params["w"], (self.dim,))
        chex.assert_rank(x, 2)
        residuals = y - x @ params["w"] - params["b"]
        return jnp.mean(geman_mcclure(residuals, self.scale)).astype(jnp.float32)

    def normalizer(self, loss: Array) -> Array:
        """Returns the loss unchanged: Geman-McClure penalties already lie in [0, 1)."""
        return loss


@register("robust_linear_regression")
class RobustRegressionFamily(TaskFamily):
    """Geman-McClure linear regression on sampled data with a sampled fraction of outliers.

    cfg fields: `data_seed` (int32), `outlier_fraction` (uniform in [0, max_outlier_fraction]),
    `init_scale` (log-uniform in [min_init_scale, max_init_scale]).
    """

    name = "robust_linear_regression"
    data_fields = ()  # every task's data is drawn in-jit from its cfg

    def __init__(
        self,
        dim: int = 3,
        num_examples: int = 25,
        noise_std: float = 0.1,
        max_outlier_fraction: float = 0.3,
        outlier_scale: float = 10.0,
        scale: float = 1.0,
        min_init_scale: float = 0.1,
        max_init_scale: float = 1.0,
    ):
        if min(int(dim), int(num_examples)) < 1:
            raise TaskError(f"robust_linear_regression needs dim >= 1 and num_examples >= 1, got {dim}, {num_examples}")
        if not 0 <= max_outlier_fraction < 1:
            raise TaskError(f"robust_linear_regression needs 0 <= max_outlier_fraction < 1, got {max_outlier_fraction}")
        if not (noise_std >= 0 and outlier_scale > 0 and scale > 0):
            raise TaskError("robust_linear_regression needs noise_std >= 0, outlier_scale > 0 and scale > 0, got "
                            f"{noise_std}, {outlier_scale}, {scale}")
        if not 0 < min_init_scale <= max_init_scale:
            raise TaskError(f"robust_linear_regression needs 0 < min_init_scale <= max_init_scale, got "
                            f"{min_init_scale}, {max_init_scale}")
        self.dim = int(dim)
        self.num_examples = int(num_examples)
        self.noise_std = float(noise_std)
        self.max_outlier_fraction = float(max_outlier_fraction)
        self.outlier_scale = float(outlier_scale)
        self.scale = float(scale)
        self.init_scale_range = (float(min_init_scale), float(max_init_scale))

    def sample(self, key: Array) -> RobustRegressionConfig:
        """Samples a data seed, an outlier fraction and a log-uniform init scale."""
        seed_draw, outlier_draw, scale_draw = jax.random.uniform(key, (3,), jnp.float32)
        low, high = (math.log(b) for b in self.init_scale_range)
        return {
            "data_seed": jnp.floor(seed_draw * 2**24).astype(jnp.int32),
            "outlier_fraction": outlier_draw * self.max_outlier_fraction,
            "init_scale": jnp.exp(low + scale_draw * (high - low)),
        }

    def task(self, cfg: RobustRegressionConfig) -> RobustRegressionTask:
        """Builds the task described by `cfg` (works with traced cfg)."""
        chex.assert_rank(cfg["outlier_fraction"], 0)
        return RobustRegressionTask(self, cfg)
