"""N-way K-shot classification episodes drawn from an image dataset: one task per episode.

At construction the chosen split of the image dataset (`example_split`, default "train") is
rearranged into a per-class table `images[row, j]` (uint8), one row per class in `classes`,
`per_class` examples each (the smallest class size, capped at `max_per_class`). A task
configuration holds the episode: `classes` (int32 [N]: distinct table rows in random order;
episode label i is dataset class `family.classes[cfg["classes"][i]]`) and example indices
into the table: `support` [N, K], `query` [N, Q] and `test` [N, Q], all distinct within a
class. Because these are arrays, a batch of episodes is vmapped like any other family.

`sample_batch(key, "train")` returns the whole support set (N*K examples; the key is unused),
`sample_batch(key, "valid")` the query set and `sample_batch(key, "test")` a second,
disjoint query set, as (x float32 [n, H, W, C], y int32 [n]) with labels 0..N-1. The inner
optimizer trains on the support set; with `meta_loss="valid"` in the meta-trainer (config
key `meta_train.meta_loss`) the meta-loss is the query-set loss after every inner step.

The model is an MLP (`model="mlp"`, widths `hidden`) or a CNN (`model="cnn"`, `channels`,
3x3 kernels, see tasks/cnn_image.py) with N outputs; each task also samples an activation
and a log-uniform init scale. Restrict `classes` to hold classes out for meta-testing (e.g.
meta-train on classes 0-6 and build a second family on 7-9). Loss: mean softmax
cross-entropy; normaliser: loss / log(N).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks.base import Array, Task, TaskError, TaskFamily, check_split
from tasks.cnn_image import POOLINGS, apply_cnn, conv_shapes, init_cnn
from tasks.datasets import is_image_dataset, load_dataset
from tasks.mlp_image import ACTIVATIONS, apply_activation
from tasks.registry import register
from tasks.sampling import check_range, init_mlp, log_uniform, uniform_index

Params = Dict[str, Dict[str, Array]]
Batch = Tuple[Array, Array]
EpisodeConfig = Dict[str, Array]
MODELS = ("mlp", "cnn")
_SPLIT_FIELDS = {"train": "support", "valid": "query", "test": "test"}


class FewShotTask(Task):
    """One N-way K-shot episode: train on the support set, measure on the query set."""

    name = "few_shot"

    def __init__(self, family: "FewShotFamily", cfg: EpisodeConfig):
        self.family = family
        self.cfg = cfg

    def init(self, key: Array) -> Params:
        """Returns fan-in-scaled normal weights times the episode's init scale, and zero biases."""
        f, scale = self.family, self.cfg["init_scale"]
        if f.model == "cnn":
            return init_cnn(key, conv_shapes(f.image_shape[-1], f.channels, (3,) * len(f.channels)), f.ways, scale)
        return init_mlp(key, (math.prod(f.image_shape),) + f.hidden + (f.ways,), scale)

    def sample_batch(self, key: Array, split: str) -> Batch:
        """Returns the support ("train"), query ("valid") or held-out query ("test") set of the episode."""
        indices = self.cfg[_SPLIT_FIELDS[check_split(split)]]
        f = self.family
        images = f.images[self.cfg["classes"][:, None], indices]
        mean, std = jnp.asarray(f.mean, jnp.float32), jnp.asarray(f.std, jnp.float32)
        x = (images.reshape((-1,) + f.image_shape).astype(jnp.float32) - mean) / std
        y = jnp.repeat(jnp.arange(f.ways, dtype=jnp.int32), indices.shape[1])
        return x, y

    def apply(self, params: Params, x: Array) -> Array:
        """Returns episode logits [n, N] for standardised images `x`."""
        f = self.family
        if f.model == "cnn":
            return apply_cnn(params, x, self.cfg["activation"], f.activations, f.pooling)
        hidden = x.reshape(x.shape[0], -1)
        num_layers = len(f.hidden) + 1
        for i in range(num_layers):
            hidden = hidden @ params[f"layer_{i}"]["w"] + params[f"layer_{i}"]["b"]
            if i < num_layers - 1:
                hidden = apply_activation(self.cfg["activation"], hidden, f.activations)
        return hidden

    def loss(self, params: Params, key: Array, batch: Batch) -> Array:
        """Returns the mean softmax cross-entropy over the N episode classes (float32)."""
        x, y = batch
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(self.apply(params, x), y)).astype(jnp.float32)

    def normalizer(self, loss: Array) -> Array:
        """Returns loss / log(N)."""
        return loss / math.log(self.family.ways)


@register("few_shot")
class FewShotFamily(TaskFamily):
    """N-way K-shot episodes over an image dataset; classes, examples, activation and init scale vary per task.

    cfg fields: `classes` [N], `support` [N, K], `query` [N, Q], `test` [N, Q] (int32),
    `activation` (int32), `init_scale` (float32).
    """

    name = "few_shot"
    data_fields = ("images",)

    def __init__(
        self,
        dataset: str = "digits",
        ways: int = 5,
        shots: int = 5,
        queries: int = 15,
        classes: Optional[Sequence[int]] = None,
        model: str = "mlp",
        hidden: Sequence[int] = (32,),
        channels: Sequence[int] = (8, 16),
        pooling: str = "avg",
        image_size: int = 8,
        example_split: str = "train",
        max_per_class: int = 500,
        data_dir: Optional[str] = None,
        min_init_scale: float = 0.5,
        max_init_scale: float = 2.0,
        activations: Sequence[str] = tuple(ACTIVATIONS),
        tfds_data_dir: Optional[str] = None,
        download: bool = False,
    ):
        if not is_image_dataset(dataset):
            raise TaskError(f"few_shot needs an image dataset (digits, mnist, fashion_mnist, cifar10, tfds:NAME), "
                            f"got {dataset!r}")
        if model not in MODELS or pooling not in POOLINGS:
            raise TaskError(
                f"few_shot model must be one of {MODELS} and pooling one of {POOLINGS}, got {model!r}, {pooling!r}"
            )
        if min(int(ways), int(shots), int(queries)) < 1 or int(ways) < 2:
            raise TaskError(f"few_shot needs ways >= 2 and shots, queries >= 1, got {ways}, {shots}, {queries}")
        if not activations or any(a not in ACTIVATIONS for a in activations):
            raise TaskError(f"few_shot activations must be a non-empty subset of {', '.join(ACTIVATIONS)}")
        data = load_dataset(dataset, int(image_size), data_dir, tfds_data_dir=tfds_data_dir, download=download)
        x, y = (np.asarray(a) for a in (data.x[check_split(example_split)], data.y[example_split]))
        pool = tuple(range(data.num_classes)) if classes is None else tuple(int(c) for c in classes)
        if len(set(pool)) != len(pool) or not all(0 <= c < data.num_classes for c in pool) or len(pool) < int(ways):
            raise TaskError(f"few_shot classes must be {ways}+ distinct ids in [0, {data.num_classes}), got {pool}")
        needed = int(shots) + 2 * int(queries)
        per_class = min(int(max_per_class), min(int(np.sum(y == c)) for c in pool))
        if per_class < needed:
            raise TaskError(
                f"few_shot: {dataset!r} {example_split} has {per_class} examples in its smallest class, "
                f"fewer than shots + 2 * queries = {needed}"
            )
        self.dataset_name = dataset
        self.ways, self.shots, self.queries = int(ways), int(shots), int(queries)
        self.classes = pool
        self.model, self.pooling = model, pooling
        self.hidden = tuple(int(h) for h in hidden)
        self.channels = tuple(int(c) for c in channels)
        self.data_dir = data_dir
        self.activations = tuple(activations)
        self.init_scale_range = check_range("few_shot", "init_scale", min_init_scale, max_init_scale)
        self.image_shape = tuple(int(d) for d in x.shape[1:])
        self.mean, self.std = data.feature_mean, data.feature_std
        self.images = jnp.asarray(np.stack([x[y == c][:per_class] for c in pool]))

    @property
    def per_class(self) -> int:
        """Number of examples per class in the episode table."""
        return int(self.images.shape[1])

    def sample(self, key: Array) -> EpisodeConfig:
        """Samples N distinct classes, disjoint support/query/test examples per class, activation and init scale."""
        num_classes, table = len(self.classes), self.ways * self.per_class
        draws = jax.random.uniform(key, (num_classes + table + 2,), jnp.float32)
        classes = jnp.argsort(draws[:num_classes])[: self.ways]
        order = jnp.argsort(draws[num_classes: num_classes + table].reshape(self.ways, self.per_class), axis=1)
        k, q = self.shots, self.queries
        activation_draw, scale_draw = draws[-2], draws[-1]
        return {
            "classes": classes.astype(jnp.int32),
            "support": order[:, :k].astype(jnp.int32),
            "query": order[:, k: k + q].astype(jnp.int32),
            "test": order[:, k + q: k + 2 * q].astype(jnp.int32),
            "activation": uniform_index(activation_draw, len(self.activations)),
            "init_scale": log_uniform(scale_draw, self.init_scale_range),
        }

    def task(self, cfg: EpisodeConfig) -> FewShotTask:
        """Builds the episode described by `cfg` (works with traced cfg and family leaves)."""
        chex.assert_shape(cfg["classes"], (self.ways,))
        chex.assert_shape([cfg["query"], cfg["test"]], (self.ways, self.queries))
        chex.assert_shape(cfg["support"], (self.ways, self.shots))
        return FewShotTask(self, cfg)

