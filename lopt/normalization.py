"""Normalisation of learned-optimizer inputs: per-channel second-moment normalisers, overflow-safe squares and
log-RMS statistics.

Every channel of a feature array is scaled by rsqrt(eps + mean square) over the other axes, in
one of two ways. `second_moment_normalize` first clips inputs to +-1e18 (MAX_ROOT), whose squares
stay finite in float32: it is small_fc_lopt's normaliser, which its trained weights, the
PyTorch port and learned_optimization's small_fc_lopt compute. `stable_second_moment_normalize`
leaves inputs unclipped and divides each channel by its largest magnitude first, so it stays
finite for any finite input and equals the plain formula wherever that is finite.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

Array = jax.Array

MAX_ROOT = 1e18
FLOAT32_MAX = float(jnp.finfo(jnp.float32).max)
MIN_SCALE = 1e-18
LOG_FLOOR = -100.0


def clip_magnitude(x: Array) -> Array:
    """Returns x clipped to [-1e18, 1e18], the range whose squares (and means of them) stay finite in float32."""
    return jnp.clip(x, -MAX_ROOT, MAX_ROOT)


def second_moment_normalize_factors(features: Array, eps: float = 1e-5, channel_axis: int = -1) -> Array:
    """Returns rsqrt(eps + mean square) of each channel (along `channel_axis`) of the clipped `features`, over
    all other axes, shaped to broadcast against them: the factors `second_moment_normalize` scales by."""
    features = clip_magnitude(features)
    reduce_axes = tuple(a for a in range(features.ndim) if a != channel_axis % features.ndim)
    return jax.lax.rsqrt(eps + jnp.mean(jnp.square(features), axis=reduce_axes, keepdims=True))


def second_moment_normalize(features: Array, eps: float = 1e-5, channel_axis: int = -1) -> Array:
    """Scales each channel (along `channel_axis`) of the features, clipped to +-1e18, by the rsqrt of its mean
    square over all other axes."""
    return clip_magnitude(features) * second_moment_normalize_factors(features, eps, channel_axis)


def safe_square(x: Array) -> Array:
    """Returns clip_magnitude(x)**2."""
    x = clip_magnitude(x)
    return x * x


def _channel_scale(x: Array, axes) -> Array:
    scale = jnp.max(jnp.abs(x), axis=axes, keepdims=True)
    return jnp.where(scale > 0, scale, 1.0)


def stable_second_moment_normalize(features: Array, eps: float = 1e-5) -> Array:
    """Scales each channel (last axis) by rsqrt(eps + mean square over the other axes), without overflow.

    Equal to `second_moment_normalize` where that is finite and unclipped: each channel is first
    divided by its largest magnitude m, and x * rsqrt(eps + mean(x^2)) is computed as
    (x / m) * rsqrt(eps / m^2 + mean((x / m)^2)).
    """
    x = jnp.clip(features, -FLOAT32_MAX, FLOAT32_MAX)
    axes = tuple(range(x.ndim - 1))
    scale = _channel_scale(x, axes)
    scaled = x / scale
    mean_square = jnp.mean(jnp.square(scaled), axis=axes, keepdims=True)
    floor = jnp.maximum(scale, MIN_SCALE)
    return scaled * jax.lax.rsqrt(eps / jnp.square(floor) + mean_square)


def second_moment_statistics(features: Array, channel_axis: int = -1) -> Tuple[Array, Array]:
    """Returns per-channel `(peak, scaled_sum)`: the largest magnitude (1 where a channel is all zeros)
    and the sum of squares of the channel divided by it, over every axis but `channel_axis`.

    Statistics of disjoint slices combine exactly with `combine_second_moment_statistics`.
    """
    x = jnp.clip(features, -FLOAT32_MAX, FLOAT32_MAX)
    axes = tuple(a for a in range(x.ndim) if a != channel_axis % x.ndim)
    peak = _channel_scale(x, axes)
    return peak.reshape(-1), jnp.sum(jnp.square(x / peak), axis=axes).reshape(-1)


def combine_second_moment_statistics(peaks: Array, scaled_sums: Array) -> Tuple[Array, Array]:
    """Returns the `(peak, scaled_sum)` of the union of slices whose statistics are stacked on axis 0."""
    peak = jnp.max(peaks, axis=0)
    return peak, jnp.sum(scaled_sums * jnp.square(peaks / peak), axis=0)


def scales_from_statistics(peak: Array, scaled_sum: Array, count: int, eps: float = 1e-5) -> Array:
    """Returns the normalisation factors of `count` values per channel with statistics `(peak, scaled_sum)`."""
    floor = jnp.maximum(peak, MIN_SCALE)
    return jax.lax.rsqrt(eps / jnp.square(floor) + scaled_sum / count) / peak


def second_moment_scales(features: Array, eps: float = 1e-5, channel_axis: int = -1) -> Array:
    """Returns the per-channel factors `[channels]` that `stable_second_moment_normalize` multiplies by.

    With channels along `channel_axis`, the features scaled by these factors equal
    `stable_second_moment_normalize` of the channel-last features up to rounding for finite
    features, so a linear layer can absorb the factors into its weights and read the raw
    features, without a normalised copy of them.
    """
    peak, scaled_sum = second_moment_statistics(features, channel_axis)
    count = features.size // features.shape[channel_axis]
    return scales_from_statistics(peak, scaled_sum, max(count, 1), eps)


def log_rms(x: Array) -> Array:
    """Returns log(sqrt(mean(x^2))) over all elements without overflow; LOG_FLOOR (-100) for an all-zero x."""
    x = jnp.clip(x.astype(jnp.float32), -FLOAT32_MAX, FLOAT32_MAX)
    peak = jnp.max(jnp.abs(x)) if x.size else jnp.zeros((), jnp.float32)
    nonzero = peak > 0
    safe_peak = jnp.where(nonzero, peak, 1.0)
    mean_square = jnp.mean(jnp.square(x / safe_peak)) if x.size else jnp.ones((), jnp.float32)
    value = jnp.log(safe_peak) + 0.5 * jnp.log(jnp.where(nonzero, mean_square, 1.0))
    return jnp.where(nonzero, jnp.maximum(value, LOG_FLOOR), LOG_FLOOR)


def cosine_similarity(a: Array, b: Array) -> Array:
    """Returns <a, b> / (|a| |b|) over all elements without overflow; 0 when either is all zeros."""
    a = jnp.clip(a.astype(jnp.float32), -FLOAT32_MAX, FLOAT32_MAX).reshape(-1)
    b = jnp.clip(b.astype(jnp.float32), -FLOAT32_MAX, FLOAT32_MAX).reshape(-1)
    a = a / _channel_scale(a, (0,))
    b = b / _channel_scale(b, (0,))
    norms = jnp.sqrt(jnp.sum(a * a) * jnp.sum(b * b))
    return jnp.where(norms > 0, jnp.sum(a * b) / jnp.where(norms > 0, norms, 1.0), 0.0)
