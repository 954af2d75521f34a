"""Adafactor-style per-parameter features: momenta, RMS, factored row/column second moments and their products.

Used by the Adafactor-feature MLP, the VeLO-style hypernetwork and Celo. For tensors with two or
more dimensions the second moment is factored over the last two axes (row means and column
means of g^2, as in Adafactor); scalars and vectors keep a full accumulator instead, which then
stands in for the row and column factors.

Every accumulator and the feature tensor are channel-major: the decay (or feature) axis comes
first and the parameter's own axes follow, so each channel is one contiguous array and a block
of a matrix's rows is a slice of every accumulator along one axis (see
`lopt.adafac_mlp.adafactor_mlp_steps`).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import chex
import jax
import jax.numpy as jnp

from lopt import features
from lopt.normalization import clip_magnitude, safe_square

Array = jax.Array

MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
RMS_DECAYS = (0.999,)
ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
EPSILON = 1e-30


class FactoredMoments(NamedTuple):
    """EMAs of g^2 + eps: `row` [K, ..., R] and `col` [K, ..., C] for ndim >= 2, else `full` [K, ...]."""

    row: Optional[Array]
    col: Optional[Array]
    full: Optional[Array]


class Accumulators(NamedTuple):
    """Per-parameter accumulators, each a tree shaped like the params with a leading decay axis."""

    momenta: Any
    rms: Any
    factored: Any


class Decays(NamedTuple):
    """Decay rates (float arrays, possibly traced) for each accumulator kind."""

    momentum: Array
    rms: Array
    factored: Array


def num_features(num_momenta: int, num_rms: int, num_factored: int) -> int:
    """Number of per-parameter channels `tensor_features` returns."""
    return 2 + num_momenta + 2 * num_rms + num_momenta * num_rms + 3 * num_factored + num_momenta * num_factored


def learned_decays(defaults: Sequence[float], offsets: Array) -> Array:
    """Returns sigmoid(logit(defaults) + offsets): the default decays when the offsets are zero."""
    defaults = jnp.asarray(defaults, jnp.float32)
    chex.assert_equal_shape([defaults, offsets])
    return jax.nn.sigmoid(jnp.log(defaults) - jnp.log1p(-defaults) + offsets)


def _is_factored(shape) -> bool:
    return len(shape) >= 2


def _init_factored(p: Array, k: int) -> FactoredMoments:
    if _is_factored(p.shape):
        row = jnp.zeros((k,) + p.shape[:-1], jnp.float32)
        col = jnp.zeros((k,) + p.shape[:-2] + p.shape[-1:], jnp.float32)
        return FactoredMoments(row, col, None)
    return FactoredMoments(None, None, jnp.zeros((k,) + p.shape, jnp.float32))


def init_accumulators(params: Any, num_momenta: int, num_rms: int, num_factored: int) -> Accumulators:
    """Returns zero accumulators for `params`."""
    zeros = lambda k: jax.tree.map(lambda p: jnp.zeros((k,) + p.shape, jnp.float32), params)
    factored = jax.tree.map(lambda p: _init_factored(p, num_factored), params)
    return Accumulators(zeros(num_momenta), zeros(num_rms), factored)


def overflow_safe_mean(x: Array, axis: int, keepdims: bool = False) -> Array:
    """Returns the mean of `x` along `axis`, finite wherever every value is: each value is divided by the
    count before the sum (a float32 sum of a few hundred squares of 1e18 overflows)."""
    return jnp.sum(x * (1.0 / x.shape[axis]), axis=axis, keepdims=keepdims)


def _update_factored(moments: FactoredMoments, g: Array, decays: Array) -> FactoredMoments:
    squared = safe_square(g) + EPSILON
    if moments.full is not None:
        return FactoredMoments(None, None, features.update_emas(moments.full, squared, decays, channel_axis=0))
    row = features.update_emas(moments.row, overflow_safe_mean(squared, -1), decays, channel_axis=0)
    col = features.update_emas(moments.col, overflow_safe_mean(squared, -2), decays, channel_axis=0)
    return FactoredMoments(row, col, None)


def update_accumulators(accumulators: Accumulators, grads: Any, decays: Decays) -> Accumulators:
    """Advances every accumulator one step with the float32 gradients `grads`, clipped to +-1e18."""
    grads = jax.tree.map(lambda g: clip_magnitude(g.astype(jnp.float32)), grads)
    momenta = jax.tree.map(lambda m, g: features.update_emas(m, g, decays.momentum, channel_axis=0),
                           accumulators.momenta, grads)
    rms = jax.tree.map(lambda v, g: features.update_emas(v, safe_square(g), decays.rms, channel_axis=0),
                       accumulators.rms, grads)
    factored = jax.tree.map(lambda g, f: _update_factored(f, g, decays.factored), grads, accumulators.factored)
    return Accumulators(momenta, rms, factored)


def _factored_terms(moments: FactoredMoments, row_mean: Optional[Array]):
    if moments.full is not None:
        rsqrt_full = jax.lax.rsqrt(moments.full)
        return rsqrt_full, rsqrt_full, rsqrt_full
    row, col = moments.row, moments.col
    col_ratio = col / (overflow_safe_mean(row, -1, keepdims=True) if row_mean is None else row_mean)
    second_moment = row[..., :, None] * col_ratio[..., None, :]
    rsqrt_row = jax.lax.rsqrt(row)[..., :, None]
    rsqrt_col = jax.lax.rsqrt(col)[..., None, :]
    shape = second_moment.shape
    return jax.lax.rsqrt(second_moment), jnp.broadcast_to(rsqrt_row, shape), jnp.broadcast_to(rsqrt_col, shape)


def tensor_features(
    g: Array, p: Array, momenta: Array, rms: Array, factored: FactoredMoments, row_mean: Optional[Array] = None
) -> Array:
    """Returns the unnormalised per-parameter channels [num_features, ...] of one tensor.

    Channels: g, p, momenta, rms, momenta * rsqrt(rms), rsqrt(rms), g * rsqrt(factored),
    rsqrt(row factor), rsqrt(column factor), momenta * rsqrt(factored). For the features of a
    slice of a matrix's rows, pass that slice of every row-indexed input and the whole matrix's
    `row_mean`, the row factor's mean over all rows `[K, 1]`.
    """
    g = clip_magnitude(g.astype(jnp.float32))[None]
    p = p.astype(jnp.float32)[None]
    rsqrt_rms = jax.lax.rsqrt(rms + EPSILON)
    momentum_over_rms = (momenta[:, None] * rsqrt_rms[None, :]).reshape((-1,) + momenta.shape[1:])
    rsqrt_factored, rsqrt_row, rsqrt_col = _factored_terms(factored, row_mean)
    momentum_over_factored = (momenta[:, None] * rsqrt_factored[None, :]).reshape((-1,) + momenta.shape[1:])
    return jnp.concatenate(
        [g, p, momenta, rms, momentum_over_rms, rsqrt_rms, g * rsqrt_factored, rsqrt_row, rsqrt_col,
         momentum_over_factored],
        axis=0,
    )
