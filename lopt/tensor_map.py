"""Mapping per-tensor functions over a parameter tree, blocked application within a tensor, and the
slash-joined names of a tree's leaves."""

from __future__ import annotations

from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp


def map_tensors(fn: Callable[..., Tuple[Any, ...]], tree: Any, *rest: Any, num_outputs: int = 2) -> Tuple[Any, ...]:
    """Applies `fn(leaf, *matching subtrees)` to every leaf of `tree` and returns one tree per output of `fn`.

    Each tree in `rest` must have `tree`'s structure as a prefix (e.g. per-tensor NamedTuple states);
    `fn` returns `num_outputs` values.
    """
    leaves, treedef = jax.tree.flatten(tree)
    others = [treedef.flatten_up_to(other) for other in rest]
    outputs = [fn(leaf, *(other[i] for other in others)) for i, leaf in enumerate(leaves)]
    return tuple(treedef.unflatten([out[k] for out in outputs]) for k in range(num_outputs))


def map_block_starts(fn: Callable[[Any, int], Any], size: int, block_size: int) -> Tuple[Any, Any]:
    """Returns `(full, partial)`: `fn(start, block_size)` for every full block of `range(size)`, stacked on a
    new leading axis by a `lax.map`, and `fn(start, rest)` for the last, partial block (None if there is none)."""
    num_full = size // block_size
    full = jax.lax.map(lambda start: fn(start, block_size), jnp.arange(num_full) * block_size)
    rest = size - num_full * block_size
    return full, (fn(num_full * block_size, rest) if rest else None)


def map_block_ranges(fn: Callable[[Any, int], jax.Array], size: int, block_size: int) -> jax.Array:
    """Returns the outputs of `fn(start, length)` over consecutive blocks of `range(size)` (full ones in a
    `lax.map`, then the partial one), joined along their leading axis."""
    full, partial = map_block_starts(fn, size, block_size)
    full = full.reshape((-1,) + full.shape[2:])
    return full if partial is None else jnp.concatenate([full, partial])


def map_blocks(fn: Callable[[jax.Array], jax.Array], x: jax.Array, block_size: int, axis: int = 0) -> jax.Array:
    """Returns `fn(x)` for an `fn` that works independently along `axis`, computed `block_size` slices at a time.

    The leading axis of `fn`'s output corresponds to `axis` of its input. Full blocks run in a
    `lax.map`, so the intermediates of `fn` (say an MLP's hidden layers over every parameter)
    stay in cache instead of being written out for all of `x` at once; the last, partial block is
    one more call.
    """
    size = x.shape[axis]
    if size // block_size <= 1:
        return fn(x)
    return map_block_ranges(
        lambda start, length: fn(jax.lax.dynamic_slice_in_dim(x, start, length, axis)), size, block_size)


def parameter_path(path: Tuple[Any, ...]) -> str:
    """Returns a pytree key path as its keys joined by "/" (e.g. "dense/b"), the string `adam_regex` is matched against."""
    parts = []
    for entry in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(entry, attribute):
                parts.append(str(getattr(entry, attribute)))
                break
        else:
            parts.append(str(entry))
    return "/".join(parts)
