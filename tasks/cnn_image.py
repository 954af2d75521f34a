"""Convolutional networks classifying small images, with a sampled activation and init scale.

Static (constructor arguments): the image dataset (any that `tasks.load_dataset` reads:
digits, mnist, fashion_mnist, cifar10, `tfds:NAME`), image size, conv channels per layer,
kernel size per layer, pooling and batch size. Each conv is stride 1 with SAME padding and
is followed by the activation and, with `pooling="max"` or `"avg"`, a 2x2 stride-2 pool
(skipped once the feature map is 1 pixel wide). The last feature map is averaged over space
and a dense head gives the class logits: the flax module `tasks.networks.CNN`.

Each task samples an activation index (applied with `lax.switch`) and an init scale,
log-uniform in [min_init_scale, max_init_scale], multiplying a fan-in-scaled normal init:
w ~ N(0, init_scale^2 / fan_in) for every conv and the head, biases 0.

Loss: mean softmax cross-entropy. Normaliser: loss / log(num_classes).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import chex
import jax
import jax.numpy as jnp

from tasks.base import Array, TaskError, TaskFamily
from tasks.datasets import ArrayDataset, is_image_dataset, load_dataset
from tasks.mlp_image import IMAGE_DATASETS, ImageClassificationTask
from tasks.networks import ACTIVATIONS, CNN, POOLINGS
from tasks.registry import register
from tasks.sampling import check_range, log_uniform, normal_draws, uniform_index

Params = Dict[str, Dict[str, Array]]
Batch = Tuple[Array, Array]
CNNConfig = Dict[str, Array]
ConvShape = Tuple[int, int, int, int]


def conv_shapes(in_channels: int, channels: Sequence[int], kernel_sizes: Sequence[int]) -> Tuple[ConvShape, ...]:
    """Returns the HWIO kernel shape of every conv layer."""
    widths = (in_channels,) + tuple(channels)
    return tuple((k, k, widths[i], widths[i + 1]) for i, k in enumerate(kernel_sizes))


def init_cnn(key: Array, shapes: Sequence[ConvShape], num_outputs: int, init_scale: Array) -> Params:
    """Returns fan-in-scaled normal conv kernels and head weights times `init_scale`, and zero biases."""
    head_shape = (shapes[-1][3], num_outputs)
    *kernels, head = normal_draws(key, list(shapes) + [head_shape])
    params = {}
    for i, (shape, w) in enumerate(zip(shapes, kernels)):
        fan_in = shape[0] * shape[1] * shape[2]
        params[f"conv_{i}"] = {"w": w * (init_scale / math.sqrt(fan_in)), "b": jnp.zeros((shape[3],), jnp.float32)}
    params["head"] = {"w": head * (init_scale / math.sqrt(head_shape[0])), "b": jnp.zeros((num_outputs,), jnp.float32)}
    return params


def apply_cnn(
    params: Params, images: Array, activation: Array, activations: Sequence[str], pooling: str
) -> Array:
    """Returns logits [batch, outputs] of the CNN `params` on float images [batch, H, W, C] (the flax CNN whose
    layers the params' shapes give)."""
    kernels = [params[f"conv_{i}"]["w"].shape for i in range(sum(1 for name in params if name.startswith("conv_")))]
    network = CNN(tuple(s[3] for s in kernels), tuple(s[0] for s in kernels), params["head"]["w"].shape[1],
                  tuple(activations), pooling)
    return network.apply({"params": params}, images, activation)


class CNNImageTask(ImageClassificationTask):
    """One CNN classifier on a fixed image dataset: params {'conv_i': {'w', 'b'}, 'head': {'w', 'b'}}."""

    name = "cnn_image"

    def __init__(self, family: "CNNImageFamily", cfg: CNNConfig):
        self.data: ArrayDataset = family.data
        self.shapes = family.shapes
        self.activations = family.activations
        self.pooling = family.pooling
        self.batch_size = family.batch_size
        self.network = family.network
        self.cfg = cfg

    def init(self, key: Array) -> Params:
        """Returns fan-in-scaled normal kernels times the task's init scale, and zero biases."""
        return init_cnn(key, self.shapes, self.data.num_classes, self.cfg["init_scale"])

    def apply(self, params: Params, x: Array) -> Array:
        """Returns class logits [batch, num_classes] of the family's flax CNN for the images `x`."""
        return self.network.apply({"params": params}, x, self.cfg["activation"])


@register("cnn_image")
class CNNImageFamily(TaskFamily):
    """CNNs with static channels, kernels and pooling on a static image dataset; activation and init scale vary.

    cfg fields: `activation` (int32 index into `activations`), `init_scale` (float32).
    """

    name = "cnn_image"
    data_fields = ("data",)

    def __init__(
        self,
        dataset: str = "digits",
        channels: Sequence[int] = (8, 16),
        kernel_size: Union[int, Sequence[int]] = 3,
        pooling: str = "avg",
        image_size: int = 8,
        batch_size: int = 64,
        data_dir: Optional[str] = None,
        min_init_scale: float = 0.5,
        max_init_scale: float = 2.0,
        activations: Sequence[str] = tuple(ACTIVATIONS),
        max_examples: Optional[int] = None,
        tfds_data_dir: Optional[str] = None,
        download: bool = False,
    ):
        if not is_image_dataset(dataset):
            choices = ", ".join(IMAGE_DATASETS)
            raise TaskError(f"cnn_image has no dataset {dataset!r}; expected one of {choices} or tfds:NAME")
        channels = tuple(int(c) for c in channels)
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size,) * len(channels)
        kernels = tuple(int(k) for k in kernel_size)
        if not channels or min(channels) < 1 or len(kernels) != len(channels) or min(kernels) < 1:
            raise TaskError(
                f"cnn_image needs positive channels and one positive kernel size per layer, got {channels}, {kernels}"
            )
        if pooling not in POOLINGS:
            raise TaskError(f"cnn_image pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if not activations or any(a not in ACTIVATIONS for a in activations):
            raise TaskError(f"cnn_image activations must be a non-empty subset of {', '.join(ACTIVATIONS)}")
        if int(batch_size) < 1:
            raise TaskError(f"cnn_image batch_size must be positive, got {batch_size}")
        self.dataset_name = dataset
        self.channels = channels
        self.kernel_sizes = kernels
        self.pooling = pooling
        self.image_size = int(image_size)
        self.batch_size = int(batch_size)
        self.data_dir = data_dir
        self.init_scale_range = check_range("cnn_image", "init_scale", min_init_scale, max_init_scale)
        self.activations = tuple(activations)
        self.data = load_dataset(
            dataset, self.image_size, data_dir, max_examples, tfds_data_dir=tfds_data_dir, download=download
        )
        self.shapes = conv_shapes(self.data.input_shape[-1], channels, kernels)
        self.network = CNN(channels, kernels, self.data.num_classes, self.activations, pooling)

    def sample(self, key: Array) -> CNNConfig:
        """Samples an activation index uniformly and a log-uniform init scale."""
        activation_draw, scale_draw = jax.random.uniform(key, (2,), jnp.float32)
        return {
            "activation": uniform_index(activation_draw, len(self.activations)),
            "init_scale": log_uniform(scale_draw, self.init_scale_range),
        }

    def task(self, cfg: CNNConfig) -> CNNImageTask:
        """Builds the task described by `cfg` (works with traced cfg and family leaves)."""
        chex.assert_rank([cfg["activation"], cfg["init_scale"]], 0)
        return CNNImageTask(self, cfg)
