"""Mapping per-tensor functions over a parameter tree, and row-blocked application within a tensor."""

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


def map_row_blocks(fn: Callable[[jax.Array], jax.Array], rows: jax.Array, block_rows: int) -> jax.Array:
    """Returns `fn(rows)` for a row-wise `fn`, computed `block_rows` rows at a time.

    Full blocks run in a `lax.map`, so the intermediates of `fn` (say an MLP's hidden layers over
    every parameter) stay in cache instead of being written out for all rows at once; the last,
    partial block is one more call.
    """
    num_rows = rows.shape[0]
    num_full = num_rows // block_rows
    if num_full <= 1:
        return fn(rows)
    head = jax.lax.map(lambda i: fn(jax.lax.dynamic_slice_in_dim(rows, i * block_rows, block_rows)), jnp.arange(num_full))
    head = head.reshape((num_full * block_rows,) + head.shape[2:])
    if num_full * block_rows == num_rows:
        return head
    return jnp.concatenate([head, fn(rows[num_full * block_rows:])])
