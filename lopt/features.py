"""Per-parameter input features shared by learned optimizers: EMAs, normalisation, time features."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

MOMENTUM_DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)


def update_emas(emas: Array, value: Array, decays: Array) -> Array:
    """Returns exponential moving averages `emas[..., k]` of `value` advanced one step with `decays[k]` (no bias correction)."""
    return emas * decays + value[..., None] * (1.0 - decays)


def second_moment_normalize(features: Array, eps: float = 1e-5) -> Array:
    """Scales each channel (last axis) of `features` by the rsqrt of its mean square over all other axes."""
    reduce_axes = tuple(range(features.ndim - 1))
    mean_square = jnp.mean(jnp.square(features), axis=reduce_axes, keepdims=True)
    return features * jax.lax.rsqrt(eps + mean_square)


def time_features(step: Array, scales: Sequence[float] = TIME_SCALES) -> Array:
    """Returns tanh(step / scale - 1) for each time scale: identical for every parameter."""
    return jnp.tanh(jnp.asarray(step, jnp.float32) / jnp.asarray(scales, jnp.float32) - 1.0)
