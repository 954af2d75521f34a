"""conv_lopt: a learned convolution over the spatial axes of conv kernels' gradient and momentum maps, read with
per-parameter features by an MLP head; every other tensor gets small_fc_lopt's per-parameter MLP."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, NamedTuple, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from lopt import features
from lopt import normalization
from lopt import tensor_map
from lopt.base import LearnedOptimizer, MetaParams, NumSteps, register
from lopt.small_fc_lopt import (SmallFcLOpt, SmallFcLOptState, column_mlp_steps, init_mlp,
                                input_normalization_factors)

Array = jax.Array

# The spatial convolution reads its maps as [channels, height, width, batch], where the batch is every
# (in, out) channel pair of one kernel, and writes its features the same way: the kernel's own element order.
MAP_DIMENSIONS = ("CHWN", "HWIO", "CHWN")


class ConvLOptState(NamedTuple):
    """Optimizer state: momenta `[num_decays, size]` of each conv kernel in tree order, small_fc_lopt's state
    over all other tensors, and the step count."""

    conv_momenta: Tuple[Array, ...]
    fallback: SmallFcLOptState
    iteration: Array


def is_conv_kernel(leaf: Array) -> bool:
    """Returns whether conv_lopt treats a parameter as a conv kernel: every 4-d tensor, read as HWIO
    `[height, width, in, out]` (the layout of tasks.cnn_image and flax.linen.Conv); decided from the static shape."""
    return jnp.ndim(leaf) == 4


def init_spatial_conv(key: Array, kernel_size: int, channels: Tuple[int, ...]) -> MetaParams:
    """Returns LeCun-normal `[k, k, in, out]` kernels and zero biases of a stack of convolutions with the given
    channel widths (the first entry is the number of input maps)."""
    params = {}
    keys = jax.random.split(key, len(channels) - 1)
    for i, (fan_in, fan_out) in enumerate(zip(channels[:-1], channels[1:])):
        shape = (kernel_size, kernel_size, fan_in, fan_out)
        params[f"w{i}"] = jax.random.normal(keys[i], shape, jnp.float32) / jnp.sqrt(kernel_size * kernel_size * fan_in)
        params[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)
    return params


def _convolve(kernel: Array, maps: Array) -> Array:
    return jax.lax.conv_general_dilated(maps, kernel, (1, 1), "SAME", dimension_numbers=MAP_DIMENSIONS)


def spatial_features(conv_params: MetaParams, maps: Array, num_layers: int) -> Array:
    """Returns the learned convolution's features `[channels_out, h, w, batch]` of `maps` `[channels_in, h, w,
    batch]`: stride-1, zero-padded ("SAME") convolutions over (h, w), ReLU between layers, the last one linear.

    Each batch entry (one (in, out) channel pair of a kernel) is convolved on its own. This is the
    definition; conv_lopt applies it as the matrices of `spatial_operators`.
    """
    hidden = maps
    for i in range(num_layers):
        hidden = _convolve(conv_params[f"w{i}"], hidden) + conv_params[f"b{i}"][:, None, None, None]
        if i < num_layers - 1:
            hidden = jax.nn.relu(hidden)
    return hidden


def spatial_operators(conv_params: MetaParams, num_layers: int, height: int, width: int) -> List[Tuple[Array, Array]]:
    """Returns each layer of `spatial_features` on `height` x `width` maps as (matrix `[out * h * w, in * h * w]`,
    bias `[out * h * w]`), acting on maps flattened channel-major, `[channels * h * w, batch]`.

    A conv kernel's maps are a few pixels wide, where one dense matmul over all of a map's pixels
    runs several times faster on XLA:CPU than the convolution (3x3 maps: the same multiply-adds);
    the matrices are the convolutions applied to the basis maps.
    """
    operators = []
    for i in range(num_layers):
        kernel = conv_params[f"w{i}"]
        size = kernel.shape[2] * height * width
        basis = jnp.eye(size, dtype=kernel.dtype).reshape(kernel.shape[2], height, width, size)
        matrix = _convolve(kernel, basis).reshape(-1, size)
        operators.append((matrix, jnp.repeat(conv_params[f"b{i}"], height * width)))
    return operators


def apply_spatial_operators(operators: Sequence[Tuple[Array, Array]], maps: Array) -> Array:
    """Returns `spatial_features` of maps flattened channel-major, `[channels * h * w, batch]`, computed with the
    layers' matrices from `spatial_operators`: `[channels_out * h * w, batch]`."""
    hidden = maps
    for i, (matrix, bias) in enumerate(operators):
        hidden = matrix @ hidden + bias[:, None]
        if i < len(operators) - 1:
            hidden = jax.nn.relu(hidden)
    return hidden


@register("conv_lopt")
@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvLOpt(LearnedOptimizer):
    """A learned optimizer that sees the spatial structure of conv kernels' gradients.

    For each conv kernel (every 4-d parameter, read as HWIO `[h, w, in, out]`; `is_conv_kernel`),
    the gradient and its momenta are normalised per tensor as in small_fc_lopt, and each
    `[h, w]` map of one (in, out) channel pair is convolved by a small learned network
    (`conv_channels` widths, `conv_kernel_size` square kernels, zero padding, so the output keeps
    the kernel's shape). Its `conv_channels[-1]` features join each element's normalised
    gradient, parameter and momenta and the time features as the inputs of a per-element MLP
    head (`hidden_sizes`, two outputs), whose step is `direction * exp(magnitude * exp_mult) *
    step_mult` as in small_fc_lopt. Every other tensor (dense weights, biases) is updated by a
    small_fc_lopt with the same settings and its own meta-parameters ("fallback").

    Meta-params: {"conv": the spatial convolutions, "head": the MLP head, "fallback":
    small_fc_lopt's}. State per conv-kernel parameter: the momenta, like small_fc_lopt.

    Each convolution layer is applied as one dense matrix over a map's `h * w` pixels
    (`spatial_operators`), with the per-tensor normalisation folded into the first matrix and the
    head's first layer, to blocks of `block_size // (h * w)` channel pairs at a time.
    """

    hidden_sizes: Tuple[int, ...] = (32, 32)
    conv_channels: Tuple[int, ...] = (8,)
    conv_kernel_size: int = 3
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    momentum_decays: Tuple[float, ...] = features.MOMENTUM_DECAYS
    time_scales: Tuple[float, ...] = features.TIME_SCALES
    block_size: int = 32768

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks their ranges."""
        super().__post_init__()
        if not self.conv_channels or not all(c >= 1 for c in self.conv_channels):
            raise ValueError(f"conv_channels must be one or more positive widths, got {self.conv_channels}")
        if self.conv_kernel_size < 1 or self.conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size must be a positive odd number, got {self.conv_kernel_size}")
        self.fallback_optimizer  # checks the settings the two share

    @property
    def fallback_optimizer(self) -> SmallFcLOpt:
        """The small_fc_lopt that updates every tensor that is not a conv kernel."""
        return SmallFcLOpt(hidden_sizes=self.hidden_sizes, step_mult=self.step_mult, exp_mult=self.exp_mult,
                           momentum_decays=self.momentum_decays, time_scales=self.time_scales,
                           block_size=self.block_size)

    @property
    def num_param_features(self) -> int:
        """Per-element inputs of the head besides the convolution's: gradient, parameter and one per momentum."""
        return 2 + len(self.momentum_decays)

    @property
    def num_maps(self) -> int:
        """Maps the spatial convolution reads: the gradient and one per momentum decay."""
        return 1 + len(self.momentum_decays)

    @property
    def receptive_field(self) -> int:
        """Width of the square of a kernel's elements whose gradients one element's convolution features read."""
        return len(self.conv_channels) * (self.conv_kernel_size - 1) + 1

    def init(self, key: Array) -> MetaParams:
        """Returns {"conv", "head", "fallback"}: LeCun-normal weights and zero biases."""
        conv_key, head_key, fallback_key = jax.random.split(key, 3)
        head_inputs = self.num_param_features + self.conv_channels[-1] + len(self.time_scales)
        return {
            "conv": init_spatial_conv(conv_key, self.conv_kernel_size, (self.num_maps, *self.conv_channels)),
            "head": init_mlp(head_key, (head_inputs, *self.hidden_sizes, 2)),
            "fallback": self.fallback_optimizer.init(fallback_key),
        }

    def _kernel_steps(self, meta_params: MetaParams, operators: Sequence[Tuple[Array, Array]], rows: Array,
                      feature_weight: Array, first_extra: Array) -> Array:
        """Returns the head's steps `[h * w * pairs]` (in rows' order) for conv-kernel elements whose per-element
        features are `rows` `[param features, h * w, pairs]`.

        The maps convolved are the gradient and momenta rows; the head's first layer is
        `feature_weight @ rows + conv weights @ conv features + first_extra` (time and bias).
        """
        num_features, pixels, pairs = rows.shape
        maps = jnp.concatenate([rows[:1], rows[2:]]).reshape(-1, pairs)
        conv = apply_spatial_operators(operators, maps).reshape(self.conv_channels[-1], pixels * pairs)
        head = meta_params["head"]
        conv_weight = head["w0"][num_features:num_features + conv.shape[0]].T
        first_layer = feature_weight @ rows.reshape(num_features, -1) + conv_weight @ conv + first_extra
        return column_mlp_steps(head, first_layer, len(self.hidden_sizes) + 1, 1.0, self.exp_mult)

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax transformation that applies the convolution and head with weights `meta_params`."""
        del num_steps
        decays = jnp.asarray(self.momentum_decays, jnp.float32)
        num_decays = len(self.momentum_decays)
        num_conv_layers = len(self.conv_channels)
        num_features = self.num_param_features
        step_mult, time_scales, block_size = self.step_mult, self.time_scales, self.block_size
        fallback = self.fallback_optimizer.transformation(meta_params["fallback"])
        head = meta_params["head"]
        num_columns = num_features + self.conv_channels[-1]

        def split(leaves):
            conv = [leaf for leaf in leaves if is_conv_kernel(leaf)]
            return conv, [leaf for leaf in leaves if not is_conv_kernel(leaf)]

        def init_fn(params):
            conv, other = split(jax.tree.leaves(params))
            return ConvLOptState(
                conv_momenta=tuple(jnp.zeros((num_decays, jnp.size(p)), jnp.float32) for p in conv),
                fallback=fallback.init(other),
                iteration=jnp.zeros((), jnp.int32),
            )

        def update_fn(grads, state, params=None, **extra_args):
            if params is None:
                raise ValueError("conv_lopt needs params: call update(grads, state, params)")
            chex.assert_trees_all_equal_shapes(grads, params)
            param_leaves, treedef = jax.tree.flatten(params)
            grad_leaves = treedef.flatten_up_to(grads)
            conv_params, other_params = split(param_leaves)
            conv_grads, other_grads = split(grad_leaves)
            if len(state.conv_momenta) != len(conv_params):
                raise ValueError(f"optimizer state holds momenta for {len(state.conv_momenta)} conv kernels, "
                                 f"params have {len(conv_params)}")
            chex.assert_shape(list(state.conv_momenta), [(num_decays, p.size) for p in conv_params])
            other_updates, fallback_state = fallback.update(other_grads, state.fallback, other_params, **extra_args)

            time_input = features.time_features(state.iteration, time_scales)
            first_bias = (time_input @ head["w0"][num_columns:] + head["b0"])[:, None]
            map_rows = [0, *range(2, num_features)]

            conv_updates, conv_momenta = [], []
            for grad, param, momentum in zip(conv_grads, conv_params, state.conv_momenta):
                flat_grad = jnp.ravel(grad).astype(jnp.float32)
                flat_param = jnp.ravel(param).astype(jnp.float32)
                momentum = features.update_emas(momentum, flat_grad, decays, channel_axis=0)
                # The per-tensor normalisation is folded into the head's first layer and the convolution's
                # first matrix, so blocks of channel pairs are read straight from the raw tensors.
                factors = input_normalization_factors(flat_grad, flat_param, momentum)
                height, width = param.shape[:2]
                pixels = height * width
                operators = spatial_operators(meta_params["conv"], num_conv_layers, height, width)
                operators[0] = (operators[0][0] * jnp.repeat(factors[jnp.asarray(map_rows)], pixels)[None, :],
                                operators[0][1])
                feature_weight = head["w0"][:num_features].T * factors[None, :]
                tensors = (flat_grad.reshape(1, pixels, -1), flat_param.reshape(1, pixels, -1),
                           momentum.reshape(num_decays, pixels, -1))

                def block(start, length, tensors=tensors, operators=operators, feature_weight=feature_weight):
                    rows = jnp.concatenate([jax.lax.dynamic_slice_in_dim(x, start, length, axis=2) for x in tensors])
                    steps = self._kernel_steps(meta_params, operators, normalization.clip_magnitude(rows),
                                               feature_weight, first_bias)
                    return steps.reshape(pixels, length).T

                num_pairs, pairs_per_block = flat_grad.shape[0] // pixels, max(1, block_size // pixels)
                steps = (block(0, num_pairs) if num_pairs <= pairs_per_block
                         else tensor_map.map_block_ranges(block, num_pairs, pairs_per_block))
                steps = steps.T * step_mult
                conv_updates.append((-steps).reshape(param.shape).astype(param.dtype))
                conv_momenta.append(momentum)

            conv_iter, other_iter = iter(conv_updates), iter(other_updates)
            updates = [next(conv_iter) if is_conv_kernel(p) else next(other_iter) for p in param_leaves]
            new_state = ConvLOptState(tuple(conv_momenta), fallback_state, state.iteration + 1)
            return jax.tree.unflatten(treedef, updates), new_state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    def update_feature_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Returns {"conv": (r, r, inputs), "fallback": (inputs,)}: an r x r patch of a conv kernel (r the
        receptive field) whose elements each have the normalised gradient, parameter and momenta and the time
        features, and one fallback parameter's small_fc_lopt inputs."""
        num_inputs = self.num_param_features + len(self.time_scales)
        width = self.receptive_field
        return {"conv": (width, width, num_inputs), "fallback": (num_inputs,)}

    def update_from_features(self, meta_params: MetaParams, features: Dict[str, Array]) -> Dict[str, Array]:
        """Returns {"conv": [n, r, r], "fallback": [n]}: the steps before `step_mult` (negated by `transformation`)
        of every element of each patch in `features["conv"]` (convolved with zero padding, as if the patch were a
        whole kernel) and of each fallback parameter in `features["fallback"]`."""
        patches = features["conv"]
        chex.assert_shape(patches, (None, *self.update_feature_shapes()["conv"]))
        num_features = self.num_param_features
        num_patches, height, width, num_inputs = patches.shape
        rows = jnp.transpose(patches, (3, 1, 2, 0)).reshape(num_inputs, height * width, num_patches)
        head = meta_params["head"]
        time_weight = head["w0"][num_features + self.conv_channels[-1]:].T
        first_extra = time_weight @ rows[num_features:].reshape(len(self.time_scales), -1) + head["b0"][:, None]
        operators = spatial_operators(meta_params["conv"], len(self.conv_channels), height, width)
        steps = self._kernel_steps(meta_params, operators, rows[:num_features], head["w0"][:num_features].T,
                                   first_extra)
        fallback = self.fallback_optimizer.update_from_features(meta_params["fallback"], {"mlp": features["fallback"]})
        return {"conv": jnp.moveaxis(steps.reshape(height, width, num_patches), -1, 0), "fallback": fallback["mlp"]}
