"""small_fc_lopt: a per-parameter MLP over gradient, parameter and momentum features."""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, NamedTuple, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from lopt import features
from lopt import normalization
from lopt import schedule_features
from lopt import tensor_map
from lopt.base import LearnedOptimizer, MetaParams, NumSteps, register

Array = jax.Array


class SmallFcLOptState(NamedTuple):
    """Optimizer state: per-leaf momenta, channel-major `[num_decays, leaf size]` in tree order, and the step count."""

    momenta: Tuple[Array, ...]
    iteration: Array


def init_mlp(key: Array, sizes: Sequence[int]) -> MetaParams:
    """Returns LeCun-normal weights and zero biases for a dense MLP with layer `sizes`."""
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        params[f"w{i}"] = jax.random.normal(keys[i], (fan_in, fan_out), jnp.float32) / jnp.sqrt(fan_in)
        params[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)
    return params


def apply_mlp_hidden(params: MetaParams, first_layer: Array, num_layers: int) -> Array:
    """Runs layers 1.. of a ReLU MLP given the pre-activation of layer 0; the last layer is linear."""
    hidden = jax.nn.relu(first_layer)
    for i in range(1, num_layers):
        hidden = hidden @ params[f"w{i}"] + params[f"b{i}"]
        if i < num_layers - 1:
            hidden = jax.nn.relu(hidden)
    return hidden


def column_mlp_steps(params: MetaParams, first_layer: Array, num_layers: int, step_mult: float, exp_mult: float) -> Array:
    """Returns per-column steps `direction * exp(magnitude * exp_mult) * step_mult` of a ReLU MLP run
    channel-major, given layer 0's pre-activation `[hidden, columns]`; the last layer has 2 outputs."""
    hidden = first_layer
    for i in range(1, num_layers):
        hidden = params[f"w{i}"].T @ jax.nn.relu(hidden) + params[f"b{i}"][:, None]
    return hidden[0] * jnp.exp(hidden[1] * exp_mult) * step_mult


def channel_major_features(grad: Array, param: Array, momenta: Array) -> Array:
    """Returns one tensor's MLP inputs `[2 + num_decays, size]`: gradient, parameter and momenta rows, each
    scaled by the rsqrt of its mean square over the tensor (inputs clipped to +-1e18 first)."""
    rows = jnp.concatenate([grad[None], param[None], momenta], axis=0)
    return normalization.second_moment_normalize(rows, channel_axis=0)


def input_normalization_factors(grad: Array, param: Array, momenta: Array) -> Array:
    """Returns the factors `[2 + num_decays]` by which `channel_major_features` scales one tensor's gradient,
    parameter and momentum rows, without stacking the rows."""
    rows = (grad[None], param[None], momenta)
    return jnp.concatenate([normalization.second_moment_normalize_factors(x, channel_axis=0)[:, 0] for x in rows])


def pack_columns(pieces: Sequence[Array], width: int) -> Array:
    """Writes `[rows, size_i]` pieces side by side, in order, into a zero `[rows, width]` array.

    In-place updates of one buffer, not a concatenate: XLA's CPU concatenate of many leaves was the
    slowest op of the whole step (15 ms of 26 on a 411k-parameter model).
    """
    packed = jnp.zeros((pieces[0].shape[0], width), pieces[0].dtype)
    offset = 0
    for piece in pieces:
        packed = jax.lax.dynamic_update_slice(packed, piece, (0, offset))
        offset += piece.shape[1]
    return packed


def mup_step_scale(shape: Sequence[int]) -> float:
    """Returns the maximal-update (muLO) factor on one tensor's step: 1 / fan_in for a weight of rank >= 2,
    where fan_in is the product of all axes but the last, and 1 for vectors and scalars."""
    return 1.0 / math.prod(shape[:-1]) if len(shape) >= 2 else 1.0


# Below this many parameters per chunk, splitting costs more in dispatch than the cores win back.
MIN_CHUNK_COLUMNS = 512


@register("small_fc_lopt")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SmallFcLOpt(LearnedOptimizer):
    """small_fc_lopt (Metz et al. 2022): per-parameter MLP, 19 inputs, outputs direction and magnitude.

    Inputs per parameter: gradient, parameter and six momenta, each normalised per tensor by
    its second moment, plus eleven time features tanh(t / tau - 1). The update is
    `-direction * exp(magnitude * exp_mult) * step_mult`.

    With `fraction_features=True` the MLP also reads how much of the run is done,
    `t / num_steps` (schedule_features.fraction_features), so it can learn a schedule relative to
    the run's length; such an optimizer should be built with `num_steps` (None means 10,000).

    Every parameter of the model is one column of a channel-major `[features, num_params]`
    array, so each layer is one `[hidden, in] @ [in, columns]` matmul over all tensors at once.
    Tensors of at least `block_size` parameters are processed on their own, `block_size` columns
    at a time, with the normalisation folded into the first layer, so neither their features nor
    the `[hidden, columns]` intermediates are written out for the whole tensor; the smaller
    tensors are packed together (and blocked the same way if they add up to more). Smaller models can be split into
    `concurrent_chunks` independent column ranges (at least MIN_CHUNK_COLUMNS each), which XLA:CPU
    runs on separate cores: 2 makes one step of a 3,466-parameter model about 20 % faster on two
    cores, but slows vmapped PES meta-training, so it is off by default and meant for applying a
    trained optimizer (`lopt.pretrained.load(name, concurrent_chunks=2)`).

    With `mup=True` (muLO, Therien et al., ICLR 2026: the maximal-update parameterisation of this
    optimizer) each tensor's step is multiplied by `mup_step_scale(shape)`: a weight of rank >= 2
    is read as `[fan_in, ..., fan_out]`, its last axis the outputs and all other axes the inputs
    (a `[fan_in, fan_out]` matrix, an HWIO conv kernel), and its step is divided by its fan-in;
    vectors (biases, norm scales) and scalars are not scaled. The inputs need no change: each is
    normalised per tensor, so the MLP's output is of order one whatever the width. Hidden and
    output layers' steps thus shrink as 1/width, as muP prescribes for Adam-like entrywise updates;
    an input layer's fan-in is the data's input size, so its factor does not change with width.
    (muLO instead leaves input layers unscaled, by per-tensor multipliers its tasks supply.) The
    task's side of muP, a readout initialised with variance 1/fan_in^2, is
    `tasks.get("mlp_image", mup=True)`. `mup=False` computes exactly the updates it always has.
    """

    hidden_sizes: Tuple[int, ...] = (32, 32)
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    momentum_decays: Tuple[float, ...] = features.MOMENTUM_DECAYS
    time_scales: Tuple[float, ...] = features.TIME_SCALES
    block_size: int = 32768
    fraction_features: bool = False
    concurrent_chunks: int = 1
    mup: bool = False

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks their ranges."""
        if not isinstance(self.mup, bool):
            raise ValueError(f"mup must be True or False, got {self.mup!r}")
        super().__post_init__()
        if not all(h >= 1 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if not (self.step_mult > 0 and self.exp_mult >= 0 and self.block_size >= 1 and self.concurrent_chunks >= 1):
            raise ValueError(
                "need step_mult > 0, exp_mult >= 0, block_size >= 1 and concurrent_chunks >= 1; got "
                f"{self.step_mult}, {self.exp_mult}, {self.block_size}, {self.concurrent_chunks}"
            )
        if not all(0.0 <= d < 1.0 for d in self.momentum_decays):
            raise ValueError(f"momentum_decays must lie in [0, 1), got {self.momentum_decays}")

    @property
    def num_param_features(self) -> int:
        """Number of per-parameter inputs: gradient, parameter and one per momentum decay."""
        return 2 + len(self.momentum_decays)

    @property
    def num_inputs(self) -> int:
        """Total MLP inputs: per-parameter features, time features and (optionally) training-fraction features."""
        num_fraction = schedule_features.NUM_FRACTION_FEATURES if self.fraction_features else 0
        return self.num_param_features + len(self.time_scales) + num_fraction

    def init(self, key: Array) -> MetaParams:
        """Returns the MLP weights: num_inputs -> hidden_sizes -> 2."""
        return init_mlp(key, (self.num_inputs, *self.hidden_sizes, 2))

    def update_feature_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Returns {"mlp": (num_inputs,)}: one parameter's MLP inputs, in the order `transformation` feeds them
        (normalised gradient, parameter and momenta, then time and, optionally, training-fraction features)."""
        return {"mlp": (self.num_inputs,)}

    def update_from_features(self, meta_params: MetaParams, features: Dict[str, Array]) -> Dict[str, Array]:
        """Returns {"mlp": [n]}: the MLP's `direction * exp(magnitude * exp_mult)` (the step before `step_mult`
        and muLO scaling, negated by `transformation`) for each row of `features["mlp"]`, `[n, num_inputs]`."""
        inputs = features["mlp"]
        chex.assert_shape(inputs, (None, self.num_inputs))
        first_layer = meta_params["w0"].T @ inputs.T + meta_params["b0"][:, None]
        return {"mlp": column_mlp_steps(meta_params, first_layer, len(self.hidden_sizes) + 1, 1.0, self.exp_mult)}

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax transformation that applies the MLP with weights `meta_params`."""
        decays = jnp.asarray(self.momentum_decays, jnp.float32)
        num_decays = len(self.momentum_decays)
        num_layers = len(self.hidden_sizes) + 1
        num_param_features = self.num_param_features
        step_mult, exp_mult, time_scales = self.step_mult, self.exp_mult, self.time_scales
        block_size = self.block_size
        use_fraction = self.fraction_features
        concurrent_chunks = self.concurrent_chunks
        use_mup = self.mup

        def init_fn(params):
            return SmallFcLOptState(
                momenta=tuple(jnp.zeros((num_decays, jnp.size(p)), jnp.float32) for p in jax.tree.leaves(params)),
                iteration=jnp.zeros((), jnp.int32),
            )

        def column_steps(columns: Array, first_weight: Array, first_bias: Array) -> Array:
            return column_mlp_steps(meta_params, first_weight @ columns + first_bias, num_layers, step_mult, exp_mult)

        def update_fn(grads, state, params=None, **extra_args):
            del extra_args
            if params is None:
                raise ValueError("small_fc_lopt needs params: call update(grads, state, params)")
            chex.assert_trees_all_equal_shapes(grads, params)
            param_leaves, treedef = jax.tree.flatten(params)
            grad_leaves = [jnp.ravel(g).astype(jnp.float32) for g in jax.tree.leaves(grads)]
            if len(state.momenta) != len(param_leaves):
                raise ValueError(
                    f"optimizer state holds momenta for {len(state.momenta)} tensors, params have {len(param_leaves)}"
                )
            chex.assert_shape(list(state.momenta), [(num_decays, g.shape[0]) for g in grad_leaves])
            momenta = [features.update_emas(m, g, decays, channel_axis=0) for m, g in zip(state.momenta, grad_leaves)]
            flat_params = [jnp.ravel(p).astype(jnp.float32) for p in param_leaves]

            time_input = features.time_features(state.iteration, time_scales)
            if use_fraction:
                fraction = schedule_features.training_fraction(state.iteration, num_steps)
                time_input = jnp.concatenate([time_input, schedule_features.fraction_features(fraction)])
            w0 = meta_params["w0"]
            first_bias = (time_input @ w0[num_param_features:] + meta_params["b0"])[:, None]
            first_weight = w0[:num_param_features].T

            def tensor_steps(grad, param, momentum):
                # The normalisation is folded into the first layer and each block's inputs are sliced
                # straight from the gradient, parameter and momenta, so no [features, size] array of the
                # whole tensor is ever written.
                weight = first_weight * input_normalization_factors(grad, param, momentum)[None, :]

                def block(start, length):
                    rows = jnp.concatenate([
                        jax.lax.dynamic_slice_in_dim(grad, start, length)[None],
                        jax.lax.dynamic_slice_in_dim(param, start, length)[None],
                        jax.lax.dynamic_slice_in_dim(momentum, start, length, axis=1),
                    ])
                    return column_steps(normalization.clip_magnitude(rows), weight, first_bias)

                return tensor_map.map_block_ranges(block, grad.shape[0], block_size)

            large = [g.shape[0] >= block_size for g in grad_leaves]
            leaf_steps = [
                tensor_steps(g, p, m) if is_large else None
                for g, p, m, is_large in zip(grad_leaves, flat_params, momenta, large)
            ]
            small = [i for i, is_large in enumerate(large) if not is_large]
            if small:
                inputs = [channel_major_features(grad_leaves[i], flat_params[i], momenta[i]) for i in small]
                num_small = sum(x.shape[1] for x in inputs)
                columns = pack_columns(inputs, num_small)
                if num_small <= block_size:
                    num_chunks = min(concurrent_chunks, max(1, num_small // MIN_CHUNK_COLUMNS))
                    edges = [num_small * i // num_chunks for i in range(num_chunks + 1)]
                    chunk_steps = [column_steps(columns[:, a:b], first_weight, first_bias)
                                   for a, b in zip(edges[:-1], edges[1:])]
                    steps = chunk_steps[0] if num_chunks == 1 else jnp.concatenate(chunk_steps)
                else:
                    steps = tensor_map.map_blocks(
                        lambda block: column_steps(block, first_weight, first_bias), columns, block_size, axis=1)
                offset = 0
                for i, x in zip(small, inputs):
                    leaf_steps[i] = steps[offset:offset + x.shape[1]]
                    offset += x.shape[1]
            if use_mup:
                leaf_steps = [steps * mup_step_scale(p.shape) for steps, p in zip(leaf_steps, param_leaves)]
            updates = [(-steps).reshape(p.shape).astype(p.dtype) for steps, p in zip(leaf_steps, param_leaves)]
            new_state = SmallFcLOptState(momenta=tuple(momenta), iteration=state.iteration + 1)
            return jax.tree.unflatten(treedef, updates), new_state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
