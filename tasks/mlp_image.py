"""Multi-layer perceptrons classifying small flattened images, with a sampled activation and init scale.

Widths, image size and dataset are static (constructor arguments); the dataset is any image
dataset `tasks.load_dataset` reads (digits, mnist, fashion_mnist, cifar10, cifar10_grey, or `tfds:NAME`).
The network is the flax module `tasks.networks.MLP`.
Each task samples an activation index (applied with `lax.switch`, so a vmapped batch of
tasks may mix activations) and an init scale, log-uniform in [min_init_scale,
max_init_scale], that multiplies a fan-in-scaled normal init: w ~ N(0, (init_scale^2) / fan_in), b = 0.
With `mup=True` the output layer (the readout) starts at w ~ N(0, init_scale^2 / fan_in^2) instead:
the task's side of the maximal-update parameterisation (muP), for optimizers that scale each
tensor's step by 1 / fan_in (small_fc_lopt with `mup=True`).

Loss: mean softmax cross-entropy. Normaliser: loss / log(num_classes), the loss of a uniform
prediction, so about 1 at initialisation and towards 0 when trained.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from tasks.base import Array, Task, TaskError, TaskFamily, check_split
from tasks.datasets import ArrayDataset, is_image_dataset, load_dataset
from tasks.networks import ACTIVATIONS, MLP, apply_activation  # noqa: F401 - apply_activation: imported from here
from tasks.registry import register

Params = Dict[str, Dict[str, Array]]
Batch = Tuple[Array, Array]
MLPConfig = Dict[str, Array]

IMAGE_DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "cifar10_grey")


class ImageClassificationTask(Task):
    """A classifier of `self.data` trained with softmax cross-entropy; subclasses define `init` and `apply`."""

    data: ArrayDataset
    batch_size: int

    def apply(self, params: Params, x: Array) -> Array:
        """Returns class logits [batch, num_classes] for the images `x`."""
        raise NotImplementedError

    def sample_batch(self, key: Array, split: str) -> Batch:
        """Draws (x float32 [batch, height, width, channels], y int32 [batch]) inside jit."""
        return self.data.sample(key, check_split(split), self.batch_size)

    def loss(self, params: Params, key: Array, batch: Batch) -> Array:
        """Returns the mean softmax cross-entropy of `params` on `batch` (float32)."""
        x, y = batch
        logits = self.apply(params, x)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)).astype(jnp.float32)

    def normalizer(self, loss: Array) -> Array:
        """Returns loss / log(num_classes)."""
        return loss / math.log(self.data.num_classes)


class MLPImageTask(ImageClassificationTask):
    """One MLP classifier on a fixed image dataset: params {'layer_i': {'w', 'b'}}."""

    name = "mlp_image"

    def __init__(self, family: "MLPImageFamily", cfg: MLPConfig):
        self.data: ArrayDataset = family.data
        self.layer_sizes = family.layer_sizes
        self.activations = family.activations
        self.batch_size = family.batch_size
        self.mup = family.mup
        self.network = family.network
        self.cfg = cfg

    def init(self, key: Array) -> Params:
        """Returns fan-in-scaled normal weights times the task's init scale (the readout's divided by fan_in
        with `mup`), and zero biases."""
        shapes = list(zip(self.layer_sizes[:-1], self.layer_sizes[1:]))
        draws = jax.random.normal(key, (sum(a * b for a, b in shapes),), jnp.float32)
        params, start = {}, 0
        for i, (fan_in, fan_out) in enumerate(shapes):
            w = draws[start: start + fan_in * fan_out].reshape(fan_in, fan_out) / math.sqrt(fan_in)
            if self.mup and i == len(shapes) - 1:
                w = w / math.sqrt(fan_in)
            start += fan_in * fan_out
            params[f"layer_{i}"] = {"w": (w * self.cfg["init_scale"]).astype(jnp.float32),
                                    "b": jnp.zeros((fan_out,), jnp.float32)}
        return params

    def apply(self, params: Params, x: Array) -> Array:
        """Returns class logits [batch, num_classes] of the family's flax MLP for images or flat features `x`."""
        chex.assert_shape(x.reshape(x.shape[0], -1), (None, self.layer_sizes[0]))
        return self.network.apply({"params": params}, x, self.cfg["activation"])


@register("mlp_image")
class MLPImageFamily(TaskFamily):
    """MLPs with static `hidden` widths on a static image dataset; activation and init scale vary per task.

    cfg fields: `activation` (int32 index into `activations`), `init_scale` (float32).
    """

    name = "mlp_image"
    data_fields = ("data",)

    def __init__(
        self,
        dataset: str = "digits",
        hidden: Sequence[int] = (32, 32),
        image_size: int = 8,
        batch_size: int = 128,
        data_dir: Optional[str] = None,
        min_init_scale: float = 0.5,
        max_init_scale: float = 2.0,
        activations: Sequence[str] = tuple(ACTIVATIONS),
        max_examples: Optional[int] = None,
        tfds_data_dir: Optional[str] = None,
        download: bool = False,
        mup: bool = False,
    ):
        if not is_image_dataset(dataset):
            raise TaskError(
                f"mlp_image has no dataset {dataset!r}; expected one of {', '.join(IMAGE_DATASETS)} or tfds:NAME"
            )
        unknown = [a for a in activations if a not in ACTIVATIONS]
        if unknown or not activations:
            raise TaskError(f"mlp_image activations must be a non-empty subset of {', '.join(ACTIVATIONS)}")
        if not 0 < min_init_scale <= max_init_scale:
            raise TaskError(
                f"mlp_image needs 0 < min_init_scale <= max_init_scale, got {min_init_scale}, {max_init_scale}"
            )
        if any(int(h) < 1 for h in hidden) or int(batch_size) < 1:
            raise TaskError(
                f"mlp_image hidden widths and batch_size must be positive, got {tuple(hidden)}, {batch_size}"
            )
        if not isinstance(mup, bool):
            raise TaskError(f"mlp_image mup must be True or False, got {mup!r}")
        self.dataset_name = dataset
        self.hidden = tuple(int(h) for h in hidden)
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.data_dir = data_dir
        self.init_scale_range = (float(min_init_scale), float(max_init_scale))
        self.activations = tuple(activations)
        self.max_examples = max_examples
        self.mup = bool(mup)
        self.data = load_dataset(
            dataset, self.image_size, data_dir, max_examples, tfds_data_dir=tfds_data_dir, download=download
        )
        self.layer_sizes = (math.prod(self.data.input_shape),) + self.hidden + (self.data.num_classes,)
        self.network = MLP(self.layer_sizes[1:], self.activations, self.mup)

    def sample(self, key: Array) -> MLPConfig:
        """Samples an activation index uniformly and a log-uniform init scale."""
        activation_draw, scale_draw = jax.random.uniform(key, (2,), jnp.float32)
        low, high = self.init_scale_range
        activation = jnp.floor(activation_draw * len(self.activations)).astype(jnp.int32)
        return {
            "activation": jnp.minimum(activation, len(self.activations) - 1),
            "init_scale": jnp.exp(math.log(low) + scale_draw * (math.log(high) - math.log(low))),
        }

    def task(self, cfg: MLPConfig) -> MLPImageTask:
        """Builds the task described by `cfg` (works with traced cfg and family leaves)."""
        chex.assert_rank([cfg["activation"], cfg["init_scale"]], 0)
        return MLPImageTask(self, cfg)
