"""Per-parameter input features shared by learned optimizers: EMAs, normalisation, time features."""

from __future__ import annotations

from typing import Any, Callable, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

MOMENTUM_DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)


def update_emas(emas: Array, value: Array, decays: Array) -> Array:
    """Returns exponential moving averages `emas[..., k]` of `value` advanced one step with `decays[k]` (no bias correction)."""
    return emas * decays + value[..., None] * (1.0 - decays)


def second_moment_normalize(features: Array, eps: float = 1e-5) -> Array:
    """Scales each channel (last axis) of `features` by the rsqrt of its mean square over all other axes."""
    features = clip_magnitude(features)
    reduce_axes = tuple(range(features.ndim - 1))
    mean_square = jnp.mean(jnp.square(features), axis=reduce_axes, keepdims=True)
    return features * jax.lax.rsqrt(eps + mean_square)


def clip_magnitude(x: Array) -> Array:
    """Returns x clipped to [-1e18, 1e18], the range whose squares (and means of them) stay finite in float32."""
    return jnp.clip(x, -1e18, 1e18)


def time_features(step: Array, scales: Sequence[float] = TIME_SCALES) -> Array:
    """Returns tanh(step / scale - 1) for each time scale: identical for every parameter."""
    return jnp.tanh(jnp.asarray(step, jnp.float32) / jnp.asarray(scales, jnp.float32) - 1.0)


def flatten_tree(tree: Any) -> Array:
    """Returns every leaf of `tree` raveled and concatenated in tree order, as float32 [total size]."""
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)])


def leaf_sizes(tree: Any) -> Tuple[int, ...]:
    """Returns the static number of elements of each leaf of `tree`, in tree order."""
    return tuple(int(np.prod(jnp.shape(x))) for x in jax.tree.leaves(tree))


def unflatten_like(flat: Array, tree: Any) -> Any:
    """Splits a flat vector back into the shapes and dtypes of `tree`'s leaves."""
    leaves, treedef = jax.tree.flatten(tree)
    offsets = np.cumsum([0] + list(leaf_sizes(tree)))
    pieces = [
        flat[offsets[i]:offsets[i + 1]].reshape(jnp.shape(x)).astype(x.dtype) for i, x in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, pieces)


def normalize_segments(rows: Array, sizes: Sequence[int], eps: float = 1e-5) -> Array:
    """Applies second_moment_normalize to each consecutive segment of `rows` ([sum(sizes), channels]) separately.

    Inputs are first clipped to +-1e18 so that their squares cannot overflow float32.
    """
    rows = clip_magnitude(rows)
    offsets = np.cumsum([0] + list(sizes))
    scales = []
    for start, stop in zip(offsets[:-1], offsets[1:]):
        mean_square = jnp.mean(jnp.square(rows[start:stop]), axis=0)
        scales.append(jnp.broadcast_to(jax.lax.rsqrt(eps + mean_square), (stop - start, rows.shape[1])))
    return rows * jnp.concatenate(scales, axis=0)


def map_in_blocks(fn: Callable[[Array], Array], rows: Array, block_size: int) -> Array:
    """Returns fn applied to `rows` ([n, ...] -> [n]) block by block with lax.map when n > block_size."""
    num_rows = rows.shape[0]
    if num_rows <= block_size:
        return fn(rows)
    num_blocks = -(-num_rows // block_size)
    padded = jnp.pad(rows, [(0, num_blocks * block_size - num_rows)] + [(0, 0)] * (rows.ndim - 1))
    blocks = padded.reshape((num_blocks, block_size) + rows.shape[1:])
    return jax.lax.map(fn, blocks).reshape(-1)[:num_rows]
