"""Binary logistic regression on real tabular data or on synthetic data generated inside jit.

`dataset="breast_cancer"`: scikit-learn's breast cancer table (569 x 30), standardised with
train-split statistics. `dataset="synthetic"`: a finite data set of `num_examples` examples
per split that is never materialised: example i of a split is a pure function of (task data
seed, split, i), so a batch costs O(batch_size * dim) and shapes are fixed. Features are
N(0, I); the label is Bernoulli(sigmoid(separation * <x, w*>)) for a unit-norm w* drawn
from the data seed, then flipped with probability `label_noise`.

With `full_batch=True` every batch is the whole split in a fixed order, so each task's loss is a
deterministic function of its parameters (the setting of Li & Malik's logistic-regression
objectives, and what line-search baselines need).

Loss: mean binary cross-entropy + 0.5 * l2 * ||w||^2. Normaliser: loss / log(2), the loss of
the all-zero classifier.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from tasks.base import Array, Task, TaskError, TaskFamily, check_split
from tasks.datasets import ArrayDataset, load_dataset
from tasks.registry import register

Params = Dict[str, Array]
Batch = Tuple[Array, Array]
LogisticConfig = Dict[str, Array]

SYNTHETIC = "synthetic"
_REAL_DATASETS = ("breast_cancer",)
_SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}


class LogisticRegressionTask(Task):
    """One logistic-regression problem: weights w (dim,) and bias b, BCE loss plus L2."""

    name = "logistic_regression"

    def __init__(self, family: "LogisticRegressionFamily", cfg: LogisticConfig):
        self.dim = family.dim
        self.batch_size = family.batch_size
        self.num_examples = family.num_examples
        self.full_batch = family.full_batch
        self.data: Optional[ArrayDataset] = family.data
        self.cfg = cfg

    def init(self, key: Array) -> Params:
        """Returns w ~ N(0, init_scale^2 / dim) and b = 0."""
        w = jax.random.normal(key, (self.dim,), jnp.float32) * self.cfg["init_scale"] / math.sqrt(self.dim)
        return {"w": w.astype(jnp.float32), "b": jnp.zeros((), jnp.float32)}

    def sample_batch(self, key: Array, split: str) -> Batch:
        """Draws (x float32 [batch, dim], y float32 in {0, 1} [batch]) inside jit; the whole split with full_batch."""
        check_split(split)
        if self.data is not None:
            x, y = self.data.full_split(split) if self.full_batch else self.data.sample(key, split, self.batch_size)
            return x, y.astype(jnp.float32)
        if self.full_batch:
            indices = jnp.arange(self.num_examples)
        else:
            indices = jax.random.randint(key, (self.batch_size,), 0, self.num_examples)
        data_key = jax.random.key(self.cfg["data_seed"])
        direction = jax.random.normal(data_key, (self.dim + 2,), jnp.float32)[: self.dim]
        direction = direction / jnp.linalg.norm(direction)
        offset = 1 + _SPLIT_IDS[split] * self.num_examples
        return jax.vmap(lambda i: self._synthetic_example(data_key, direction, offset + i))(indices)

    def _synthetic_example(self, data_key: Array, direction: Array, example_id: Array) -> Batch:
        # Features and two uniforms (ndtr maps N(0, 1) onto U(0, 1)) from one draw per example.
        draws = jax.random.normal(jax.random.fold_in(data_key, example_id), (self.dim + 2,), jnp.float32)
        x, (label_draw, flip_draw) = draws[: self.dim], jax.scipy.special.ndtr(draws[self.dim:])
        label = label_draw < jax.nn.sigmoid(self.cfg["separation"] * jnp.dot(x, direction))
        flip = flip_draw < self.cfg["label_noise"]
        return x, jnp.logical_xor(label, flip).astype(jnp.float32)

    def loss(self, params: Params, key: Array, batch: Batch) -> Array:
        """Returns mean binary cross-entropy on `batch` plus 0.5 * l2 * ||w||^2 (float32)."""
        x, y = batch
        chex.assert_shape(params["w"], (self.dim,))
        chex.assert_rank(x, 2)
        logits = x @ params["w"] + params["b"]
        data_loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))
        return (data_loss + 0.5 * self.cfg["l2"] * jnp.sum(jnp.square(params["w"]))).astype(jnp.float32)

    def normalizer(self, loss: Array) -> Array:
        """Returns loss / log(2): about 1 for an uninformed classifier, towards 0 when trained."""
        return loss / math.log(2.0)


@register("logistic_regression")
class LogisticRegressionFamily(TaskFamily):
    """Logistic regression on `dataset` ("breast_cancer" or "synthetic") with sampled L2 and init scale.

    cfg fields: `l2`, `init_scale`; for "synthetic" also `data_seed` (int32), `separation`,
    `label_noise`. `num_examples` is the synthetic split size, and a cap on real splits.
    `full_batch=True` makes every batch the whole split (a deterministic loss; batch_size unused).
    """

    name = "logistic_regression"
    data_fields = ("data",)  # None for the synthetic family, whose data is drawn in-jit

    def __init__(
        self,
        dataset: str = "breast_cancer",
        dim: int = 30,
        num_examples: int = 512,
        batch_size: int = 64,
        min_l2: float = 1e-5,
        max_l2: float = 1e-2,
        min_init_scale: float = 0.1,
        max_init_scale: float = 1.0,
        min_separation: float = 2.0,
        max_separation: float = 20.0,
        max_label_noise: float = 0.1,
        full_batch: bool = False,
    ):
        if dataset != SYNTHETIC and dataset not in _REAL_DATASETS:
            choices = ", ".join(_REAL_DATASETS + (SYNTHETIC,))
            raise TaskError(f"logistic_regression has no dataset {dataset!r}; expected one of {choices}")
        for label, low, high in (("l2", min_l2, max_l2), ("init_scale", min_init_scale, max_init_scale),
                                 ("separation", min_separation, max_separation)):
            if not 0 < low <= high:
                raise TaskError(f"logistic_regression needs 0 < min_{label} <= max_{label}, got {low}, {high}")
        if not 0 <= max_label_noise <= 0.5:
            raise TaskError(f"logistic_regression needs 0 <= max_label_noise <= 0.5, got {max_label_noise}")
        if min(int(dim), int(num_examples), int(batch_size)) < 1:
            raise TaskError("logistic_regression dim, num_examples and batch_size must be positive integers")
        self.dataset_name = dataset
        self.dim = int(dim)
        self.num_examples = int(num_examples)
        self.batch_size = int(batch_size)
        self.full_batch = bool(full_batch)
        self.l2_range = (float(min_l2), float(max_l2))
        self.init_scale_range = (float(min_init_scale), float(max_init_scale))
        self.separation_range = (float(min_separation), float(max_separation))
        self.max_label_noise = float(max_label_noise)
        self.data = None if dataset == SYNTHETIC else load_dataset(dataset, max_examples=self.num_examples)
        if self.data is not None and self.data.input_shape != (self.dim,):
            features = self.data.input_shape[0]
            raise TaskError(f"dataset {dataset!r} has {features} features; set dim={features}")

    def sample(self, key: Array) -> LogisticConfig:
        """Samples log-uniform L2 and init scale; for synthetic data also seed, separation, label noise."""
        l2_draw, scale_draw, seed_draw, separation_draw, noise_draw = jax.random.uniform(key, (5,), jnp.float32)
        cfg = {
            "l2": _log_uniform(l2_draw, self.l2_range),
            "init_scale": _log_uniform(scale_draw, self.init_scale_range),
        }
        if self.data is None:
            cfg["data_seed"] = jnp.floor(seed_draw * 2**24).astype(jnp.int32)
            cfg["separation"] = _log_uniform(separation_draw, self.separation_range)
            cfg["label_noise"] = noise_draw * self.max_label_noise
        return cfg

    def task(self, cfg: LogisticConfig) -> LogisticRegressionTask:
        """Builds the task described by `cfg` (works with traced cfg and family leaves)."""
        chex.assert_rank(cfg["l2"], 0)
        return LogisticRegressionTask(self, cfg)


def _log_uniform(unit_draw: Array, bounds: Tuple[float, float]) -> Array:
    low, high = math.log(bounds[0]), math.log(bounds[1])
    return jnp.exp(low + unit_draw * (high - low))
