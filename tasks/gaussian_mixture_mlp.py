"""Small two-layer neural-net classifiers of points sampled from a Gaussian mixture (Li & Malik 2016's third class).

`mlp_image` trains MLPs on one fixed image data set with sampled minibatches; the paper's
objectives are instead a tiny network fitted to a small sampled data set, a different one per
objective, with the whole data set as the batch. Here each task draws, from its seed, the means
of `num_classes * clusters_per_class` unit-variance Gaussian clusters (means ~ N(0,
separation^2 I_dim)); example i of a split comes from cluster i mod (number of clusters) and is
labelled with that cluster's class (cluster index mod num_classes), so classes are unions of
clusters and generally not linearly separable. Every batch is the whole split (`num_examples`
examples in a fixed order): a task's loss is a deterministic function of its parameters.

Model: dim -> hidden (ReLU) -> num_classes logits; weights fan-in-scaled normal times the
task's init scale, biases zero. Loss: mean softmax cross-entropy + 0.5 * l2 * (sum of squared
weights). Normaliser: loss / log(num_classes), the loss of a uniform prediction.
"""

from __future__ import annotations

import math
from typing import Dict, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from tasks.base import Array, Task, TaskError, TaskFamily, check_split
from tasks.registry import register

Params = Dict[str, Dict[str, Array]]
Batch = Tuple[Array, Array]
MixtureConfig = Dict[str, Array]

_SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}


class GaussianMixtureMLPTask(Task):
    """One two-layer classifier fitted to one sampled Gaussian-mixture data set."""

    name = "gaussian_mixture_mlp"

    def __init__(self, family: "GaussianMixtureMLPFamily", cfg: MixtureConfig):
        self.dim = family.dim
        self.hidden = family.hidden
        self.num_classes = family.num_classes
        self.num_clusters = family.num_classes * family.clusters_per_class
        self.num_examples = family.num_examples
        self.separation = family.separation
        self.l2 = family.l2
        self.cfg = cfg

    def init(self, key: Array) -> Params:
        """Returns fan-in-scaled normal weights times the task's init scale, and zero biases."""
        first_key, second_key = jax.random.split(key)
        scale = self.cfg["init_scale"]
        return {
            "hidden": {"w": jax.random.normal(first_key, (self.dim, self.hidden), jnp.float32) * scale
                       / math.sqrt(self.dim), "b": jnp.zeros((self.hidden,), jnp.float32)},
            "output": {"w": jax.random.normal(second_key, (self.hidden, self.num_classes), jnp.float32) * scale
                       / math.sqrt(self.hidden), "b": jnp.zeros((self.num_classes,), jnp.float32)},
        }

    def sample_batch(self, key: Array, split: str) -> Batch:
        """Returns the whole split as (x float32 [num_examples, dim], y int32 [num_examples]); `key` is unused."""
        del key
        check_split(split)
        data_key = jax.random.key(self.cfg["data_seed"])
        means = self.separation * jax.random.normal(data_key, (self.num_clusters, self.dim), jnp.float32)
        example_ids = jnp.arange(self.num_examples)
        cluster = example_ids % self.num_clusters
        split_key = jax.random.fold_in(data_key, 1 + _SPLIT_IDS[split])
        offsets = jax.random.normal(split_key, (self.num_examples, self.dim), jnp.float32)
        return means[cluster] + offsets, (cluster % self.num_classes).astype(jnp.int32)

    def apply(self, params: Params, x: Array) -> Array:
        """Returns class logits [batch, num_classes] for points `x` [batch, dim]."""
        chex.assert_shape(x, (None, self.dim))
        hidden = jax.nn.relu(x @ params["hidden"]["w"] + params["hidden"]["b"])
        return hidden @ params["output"]["w"] + params["output"]["b"]

    def loss(self, params: Params, key: Array, batch: Batch) -> Array:
        """Returns the mean softmax cross-entropy on `batch` plus 0.5 * l2 * (squared weights) (float32)."""
        del key
        x, y = batch
        data_loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(self.apply(params, x), y))
        penalty = jnp.sum(jnp.square(params["hidden"]["w"])) + jnp.sum(jnp.square(params["output"]["w"]))
        return (data_loss + 0.5 * self.l2 * penalty).astype(jnp.float32)

    def normalizer(self, loss: Array) -> Array:
        """Returns loss / log(num_classes)."""
        return loss / math.log(self.num_classes)


@register("gaussian_mixture_mlp")
class GaussianMixtureMLPFamily(TaskFamily):
    """Two-layer ReLU classifiers (dim -> hidden -> num_classes) of sampled Gaussian-mixture data sets.

    cfg fields: `data_seed` (int32), `init_scale` (log-uniform in [min_init_scale, max_init_scale]).
    """

    name = "gaussian_mixture_mlp"
    data_fields = ()  # every task's data is drawn in-jit from its cfg

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 4,
        num_classes: int = 2,
        clusters_per_class: int = 2,
        num_examples: int = 100,
        separation: float = 2.0,
        l2: float = 5e-4,
        min_init_scale: float = 0.5,
        max_init_scale: float = 2.0,
    ):
        if min(int(dim), int(hidden), int(clusters_per_class), int(num_examples)) < 1 or int(num_classes) < 2:
            raise TaskError("gaussian_mixture_mlp needs dim, hidden, clusters_per_class, num_examples >= 1 and "
                            f"num_classes >= 2, got {dim}, {hidden}, {clusters_per_class}, {num_examples}, {num_classes}")
        if not (separation > 0 and l2 >= 0):
            raise TaskError(f"gaussian_mixture_mlp needs separation > 0 and l2 >= 0, got {separation}, {l2}")
        if not 0 < min_init_scale <= max_init_scale:
            raise TaskError(f"gaussian_mixture_mlp needs 0 < min_init_scale <= max_init_scale, got "
                            f"{min_init_scale}, {max_init_scale}")
        self.dim = int(dim)
        self.hidden = int(hidden)
        self.num_classes = int(num_classes)
        self.clusters_per_class = int(clusters_per_class)
        self.num_examples = int(num_examples)
        self.separation = float(separation)
        self.l2 = float(l2)
        self.init_scale_range = (float(min_init_scale), float(max_init_scale))

    def sample(self, key: Array) -> MixtureConfig:
        """Samples a data seed and a log-uniform init scale."""
        seed_draw, scale_draw = jax.random.uniform(key, (2,), jnp.float32)
        low, high = (math.log(b) for b in self.init_scale_range)
        return {
            "data_seed": jnp.floor(seed_draw * 2**24).astype(jnp.int32),
            "init_scale": jnp.exp(low + scale_draw * (high - low)),
        }

    def task(self, cfg: MixtureConfig) -> GaussianMixtureMLPTask:
        """Builds the task described by `cfg` (works with traced cfg)."""
        chex.assert_rank(cfg["init_scale"], 0)
        return GaussianMixtureMLPTask(self, cfg)
