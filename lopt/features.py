"""Per-parameter input features shared by learned optimizers: EMAs, normalisation, time features."""

from __future__ import annotations

from typing import Any, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

MOMENTUM_DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)


def update_emas(emas: Array, value: Array, decays: Array, channel_axis: int = -1) -> Array:
    """Returns exponential moving averages of `value` advanced one step (no bias correction); channel k
    along `channel_axis` of `emas` decays with `decays[k]`."""
    shape = [1] * emas.ndim
    shape[channel_axis] = -1
    decays = jnp.reshape(decays, shape)
    return emas * decays + jnp.expand_dims(value, channel_axis) * (1.0 - decays)


def second_moment_factors(features: Array, eps: float = 1e-5, channel_axis: int = -1) -> Array:
    """Returns rsqrt(eps + mean square) of each channel (along `channel_axis`) of the clipped `features`, over
    all other axes, shaped to broadcast against them: the factors `second_moment_normalize` scales by."""
    features = clip_magnitude(features)
    reduce_axes = tuple(a for a in range(features.ndim) if a != channel_axis % features.ndim)
    return jax.lax.rsqrt(eps + jnp.mean(jnp.square(features), axis=reduce_axes, keepdims=True))


def second_moment_normalize(features: Array, eps: float = 1e-5, channel_axis: int = -1) -> Array:
    """Scales each channel (along `channel_axis`) of `features` by the rsqrt of its mean square over all other axes."""
    return clip_magnitude(features) * second_moment_factors(features, eps, channel_axis)


def clip_magnitude(x: Array) -> Array:
    """Returns x clipped to [-1e18, 1e18], the range whose squares (and means of them) stay finite in float32."""
    return jnp.clip(x, -1e18, 1e18)


def time_features(step: Array, scales: Sequence[float] = TIME_SCALES) -> Array:
    """Returns tanh(step / scale - 1) for each time scale: identical for every parameter."""
    return jnp.tanh(jnp.asarray(step, jnp.float32) / jnp.asarray(scales, jnp.float32) - 1.0)


def leaf_sizes(tree: Any) -> Tuple[int, ...]:
    """Returns the static number of elements of each leaf of `tree`, in tree order."""
    return tuple(int(np.prod(jnp.shape(x))) for x in jax.tree.leaves(tree))
