"""Random draws inside jit: per-task hyperparameters (log-uniform scales, uniform indices) and initial weights."""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp

from tasks.base import TaskError

Array = jax.Array


def log_uniform(unit_draw: Array, bounds: Tuple[float, float]) -> Array:
    """Maps a U(0, 1) draw onto a log-uniform value in [bounds[0], bounds[1]] (float32)."""
    low, high = math.log(bounds[0]), math.log(bounds[1])
    return jnp.exp(low + unit_draw * (high - low)).astype(jnp.float32)


def uniform_index(unit_draw: Array, count: int, start: int = 0) -> Array:
    """Maps a U(0, 1) draw onto an int32 drawn uniformly from start, ..., start + count - 1."""
    index = jnp.floor(unit_draw * count).astype(jnp.int32)
    return start + jnp.clip(index, 0, count - 1)


def check_range(family: str, label: str, low: float, high: float) -> Tuple[float, float]:
    """Returns (low, high) as floats if 0 < low <= high, else raises the family's TaskError."""
    if not 0 < low <= high:
        raise TaskError(f"{family} needs 0 < min_{label} <= max_{label}, got {low}, {high}")
    return float(low), float(high)


def normal_draws(key: Array, shapes: Sequence[Tuple[int, ...]]) -> List[Array]:
    """Returns float32 standard normals of every shape in `shapes`, all sliced from one RNG call.

    One call compiles one RNG kernel; a separate `jax.random.normal` per distinct shape costs
    about a second of compile time each on CPU.
    """
    sizes = [math.prod(shape) for shape in shapes]
    flat = jax.random.normal(key, (max(sum(sizes), 1),), jnp.float32)
    draws, start = [], 0
    for shape, size in zip(shapes, sizes):
        draws.append(flat[start: start + size].reshape(shape))
        start += size
    return draws


def init_mlp(key: Array, sizes: Sequence[int], init_scale: Array) -> Dict[str, Dict[str, Array]]:
    """Returns MLP params {'layer_i': {'w', 'b'}} for widths `sizes`: w ~ N(0, init_scale^2 / fan_in), b = 0."""
    shapes = list(zip(sizes[:-1], sizes[1:]))
    return {
        f"layer_{i}": {"w": w * (init_scale / math.sqrt(a)), "b": jnp.zeros((b,), jnp.float32)}
        for i, ((a, b), w) in enumerate(zip(shapes, normal_draws(key, shapes)))
    }
