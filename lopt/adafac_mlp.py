"""AdafacMLPLOpt: a per-parameter MLP over 28 Adafactor-style features plus 11 time features (39 inputs).

The accumulator decays are meta-parameters: decay = sigmoid(logit(default) + offset) with the
offsets initialised to zero, so freshly initialised meta-params use the default decays.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from lopt import adafactor_features as adafac
from lopt import features
from lopt.base import LearnedOptimizer, MetaParams, NumSteps, register
from lopt.small_fc_lopt import column_mlp_steps, init_mlp
from lopt.normalization import (
    FLOAT32_MAX, combine_second_moment_statistics, scales_from_statistics, second_moment_scales,
    second_moment_statistics,
)
from lopt.tensor_map import map_block_ranges, map_block_starts, map_blocks

Array = jax.Array


class AdafacMLPState(NamedTuple):
    """Adafactor accumulators and the step count."""

    accumulators: adafac.Accumulators
    iteration: Array


def require_params(params: Any, name: str) -> None:
    """Raises ValueError if a learned optimizer that reads parameters was called without them."""
    if params is None:
        raise ValueError(f"the {name} learned optimizer needs params: call update(grads, state, params)")


def decays_from(meta_decays: MetaParams, defaults: Tuple[Tuple[float, ...], ...]) -> adafac.Decays:
    """Returns the learned decays for offsets {'momentum', 'rms', 'adafactor'} around `defaults`."""
    momentum, rms, factored = defaults
    return adafac.Decays(
        adafac.learned_decays(momentum, meta_decays["momentum"]),
        adafac.learned_decays(rms, meta_decays["rms"]),
        adafac.learned_decays(factored, meta_decays["adafactor"]),
    )


def magnitude_step(out: Array, step_mult: float, exp_mult: float) -> Array:
    """Returns direction * exp(magnitude * exp_mult) * step_mult from an output [..., 2]."""
    return out[..., 0] * jnp.exp(out[..., 1] * exp_mult) * step_mult


# Parameters the per-parameter MLP evaluates together: its [hidden, block] intermediates stay in L2.
COLUMN_BLOCK = 8192


def adafactor_mlp_steps(
    mlp: MetaParams, first_bias: Array, num_layers: int, step_mult: float, exp_mult: float,
    g: Array, p: Array, m: Array, v: Array, f: adafac.FactoredMoments,
) -> Array:
    """Returns one tensor's steps (shape of `p`, float32): the MLP `mlp` over its normalised Adafactor features.

    The first layer reads `mlp["w0"][:num_features]`; `first_bias` is its bias with any
    per-step inputs (time features) already folded in. The per-channel normalisation is folded
    into the first layer's weights, and the MLP runs on channel-major `[features, COLUMN_BLOCK]`
    slices of the parameters. For matrices larger than two blocks the features are never
    materialised whole: each block of rows computes its own, once for the normalisation
    statistics and once for the MLP.
    """
    def mlp_steps(columns: Array, first_weight: Array) -> Array:
        first_layer = first_weight @ jnp.clip(columns, -FLOAT32_MAX, FLOAT32_MAX) + first_bias[:, None]
        return column_mlp_steps(mlp, first_layer, num_layers, step_mult, exp_mult)

    def weight_for(scales: Array) -> Array:
        return (scales[:, None] * mlp["w0"][:scales.shape[0]]).T

    if p.ndim != 2 or p.size <= 2 * COLUMN_BLOCK:
        raw = adafac.tensor_features(g, p, m, v, f)
        first_weight = weight_for(second_moment_scales(raw, channel_axis=0))
        columns = raw.reshape(raw.shape[0], -1)
        return map_blocks(lambda block: mlp_steps(block, first_weight), columns, COLUMN_BLOCK, axis=1).reshape(p.shape)

    num_rows, num_cols = p.shape
    block_rows = max(1, COLUMN_BLOCK // num_cols)
    row_mean = adafac.overflow_safe_mean(f.row, -1, keepdims=True)

    def row_features(start, size: int) -> Array:
        rows = lambda x, axis: jax.lax.dynamic_slice_in_dim(x, start, size, axis)
        moments = adafac.FactoredMoments(rows(f.row, 1), f.col, None)
        features = adafac.tensor_features(rows(g, 0), rows(p, 0), rows(m, 1), rows(v, 1), moments, row_mean)
        return features.reshape(features.shape[0], -1)

    (peaks, sums), partial = map_block_starts(
        lambda start, size: second_moment_statistics(row_features(start, size), 0), num_rows, block_rows)
    if partial is not None:
        peaks, sums = jnp.concatenate([peaks, partial[0][None]]), jnp.concatenate([sums, partial[1][None]])
    first_weight = weight_for(scales_from_statistics(*combine_second_moment_statistics(peaks, sums), p.size))
    steps = map_block_ranges(lambda start, size: mlp_steps(row_features(start, size), first_weight), num_rows, block_rows)
    return steps.reshape(p.shape)


@register("adafac_mlp")
@dataclasses.dataclass(frozen=True, kw_only=True)
class AdafacMLPLOpt(LearnedOptimizer):
    """Per-parameter MLP (ReLU, hidden_sizes) over Adafactor features and time; outputs direction and magnitude."""

    hidden_sizes: Tuple[int, ...] = (32, 32)
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    momentum_decays: Tuple[float, ...] = adafac.MOMENTUM_DECAYS
    rms_decays: Tuple[float, ...] = adafac.RMS_DECAYS
    adafactor_decays: Tuple[float, ...] = adafac.ADAFACTOR_DECAYS
    time_scales: Tuple[float, ...] = features.TIME_SCALES

    @property
    def num_param_features(self) -> int:
        """Per-parameter channels (28 with the default decays)."""
        return adafac.num_features(len(self.momentum_decays), len(self.rms_decays), len(self.adafactor_decays))

    @property
    def num_inputs(self) -> int:
        """Per-parameter channels plus time features (39 by default)."""
        return self.num_param_features + len(self.time_scales)

    def init(self, key: Array) -> MetaParams:
        """Returns the MLP weights and zero decay offsets (the default decays)."""
        return {
            "mlp": init_mlp(key, (self.num_inputs, *self.hidden_sizes, 2)),
            "decays": {
                "momentum": jnp.zeros((len(self.momentum_decays),), jnp.float32),
                "rms": jnp.zeros((len(self.rms_decays),), jnp.float32),
                "adafactor": jnp.zeros((len(self.adafactor_decays),), jnp.float32),
            },
        }

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax transformation that applies the MLP with weights `meta_params`."""
        del num_steps
        mlp = meta_params["mlp"]
        num_layers = len(self.hidden_sizes) + 1
        num_param_features = self.num_param_features
        sizes = (len(self.momentum_decays), len(self.rms_decays), len(self.adafactor_decays))
        defaults = (self.momentum_decays, self.rms_decays, self.adafactor_decays)
        step_mult, exp_mult, time_scales = self.step_mult, self.exp_mult, self.time_scales

        def init_fn(params):
            return AdafacMLPState(adafac.init_accumulators(params, *sizes), jnp.zeros((), jnp.int32))

        def update_fn(grads, state, params=None, **extra_args):
            del extra_args
            require_params(params, "adafac_mlp")
            chex.assert_trees_all_equal_shapes(grads, params)
            accumulators = adafac.update_accumulators(state.accumulators, grads, decays_from(meta_params["decays"], defaults))
            time_input = features.time_features(state.iteration, time_scales)
            time_bias = time_input @ mlp["w0"][num_param_features:] + mlp["b0"]

            def tensor_update(g, p, m, v, f):
                steps = adafactor_mlp_steps(mlp, time_bias, num_layers, step_mult, exp_mult, g, p, m, v, f)
                return (-steps).astype(p.dtype)

            updates = jax.tree.map(
                tensor_update, grads, params, accumulators.momenta, accumulators.rms, accumulators.factored
            )
            return updates, AdafacMLPState(accumulators, state.iteration + 1)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
