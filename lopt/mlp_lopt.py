"""small_fc_lopt: a per-parameter MLP over gradient, parameter and momentum features."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from lopt import features
from lopt.base import LearnedOptimizer, MetaParams, NumSteps, register

Array = jax.Array


class MLPLOptState(NamedTuple):
    """Optimizer state: momenta of every parameter, flattened in tree order to [num_params, num_decays], and the step count."""

    momenta: Array
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


@register("mlp")
class MLPLOpt(LearnedOptimizer):
    """small_fc_lopt (Metz et al. 2022): per-parameter MLP, 19 inputs, outputs direction and magnitude.

    Inputs per parameter: gradient, parameter and six momenta, each normalised per tensor by
    its second moment, plus eleven time features tanh(t / tau - 1). The update is
    `-direction * exp(magnitude * exp_mult) * step_mult`.

    All parameters are processed as one flat [num_params, features] array, in blocks of
    `block_size` rows when larger, so the MLP's [rows, hidden] intermediates stay in cache.
    """

    def __init__(
        self,
        hidden_sizes: Tuple[int, ...] = (32, 32),
        step_mult: float = 1e-3,
        exp_mult: float = 1e-3,
        momentum_decays: Tuple[float, ...] = features.MOMENTUM_DECAYS,
        time_scales: Tuple[float, ...] = features.TIME_SCALES,
        block_size: int = 32768,
    ):
        if not all(int(h) >= 1 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive widths, got {tuple(hidden_sizes)}")
        if not (step_mult > 0 and exp_mult >= 0 and int(block_size) >= 1):
            raise ValueError(
                f"need step_mult > 0, exp_mult >= 0 and block_size >= 1; got {step_mult}, {exp_mult}, {block_size}"
            )
        if not all(0.0 <= float(d) < 1.0 for d in momentum_decays):
            raise ValueError(f"momentum_decays must lie in [0, 1), got {tuple(momentum_decays)}")
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.step_mult = float(step_mult)
        self.exp_mult = float(exp_mult)
        self.momentum_decays = tuple(float(d) for d in momentum_decays)
        self.time_scales = tuple(float(t) for t in time_scales)
        self.block_size = int(block_size)

    @property
    def num_param_features(self) -> int:
        """Number of per-parameter inputs: gradient, parameter and one per momentum decay."""
        return 2 + len(self.momentum_decays)

    @property
    def num_inputs(self) -> int:
        """Total MLP inputs: per-parameter features plus time features."""
        return self.num_param_features + len(self.time_scales)

    def init(self, key: Array) -> MetaParams:
        """Returns the MLP weights: num_inputs -> hidden_sizes -> 2."""
        return init_mlp(key, (self.num_inputs, *self.hidden_sizes, 2))

    def optimizer(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax transformation that applies the MLP with weights `meta_params`."""
        decays = jnp.asarray(self.momentum_decays, jnp.float32)
        num_layers = len(self.hidden_sizes) + 1
        num_param_features = self.num_param_features
        step_mult, exp_mult, time_scales = self.step_mult, self.exp_mult, self.time_scales
        block_size = self.block_size

        def init_fn(params):
            size = sum(jnp.size(p) for p in jax.tree.leaves(params))
            return MLPLOptState(
                momenta=jnp.zeros((size, len(self.momentum_decays)), jnp.float32),
                iteration=jnp.zeros((), jnp.int32),
            )

        def update_fn(grads, state, params=None, **extra_args):
            del extra_args
            if params is None:
                raise ValueError("the mlp learned optimizer needs params: call update(grads, state, params)")
            chex.assert_trees_all_equal_shapes(grads, params)
            flat_grads = features.flatten_tree(grads)
            chex.assert_shape(state.momenta, (flat_grads.shape[0], len(self.momentum_decays)))
            momenta = features.update_emas(state.momenta, flat_grads, decays)
            sizes = features.leaf_sizes(params)
            per_param = jnp.concatenate(
                [flat_grads[:, None], features.flatten_tree(params)[:, None], momenta], axis=1
            )
            per_param = features.normalize_segments(per_param, sizes)
            time_input = features.time_features(state.iteration, time_scales)
            w0 = meta_params["w0"]
            time_bias = time_input @ w0[num_param_features:] + meta_params["b0"]

            def step_of(rows):
                first = rows @ w0[:num_param_features] + time_bias
                out = apply_mlp_hidden(meta_params, first, num_layers)
                return out[..., 0] * jnp.exp(out[..., 1] * exp_mult) * step_mult

            steps = features.map_in_blocks(step_of, per_param, block_size)
            updates = features.unflatten_like(-steps, params)
            return updates, MLPLOptState(momenta=momenta, iteration=state.iteration + 1)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
