"""Mapping a per-tensor function that returns several outputs over a parameter tree."""

from __future__ import annotations

from typing import Any, Callable, Tuple

import jax


def map_tensors(fn: Callable[..., Tuple[Any, ...]], tree: Any, *rest: Any, num_outputs: int = 2) -> Tuple[Any, ...]:
    """Applies `fn(leaf, *matching subtrees)` to every leaf of `tree` and returns one tree per output of `fn`.

    Each tree in `rest` must have `tree`'s structure as a prefix (e.g. per-tensor NamedTuple states);
    `fn` returns `num_outputs` values.
    """
    leaves, treedef = jax.tree.flatten(tree)
    others = [treedef.flatten_up_to(other) for other in rest]
    outputs = [fn(leaf, *(other[i] for other in others)) for i, leaf in enumerate(leaves)]
    return tuple(treedef.unflatten([out[k] for out in outputs]) for k in range(num_outputs))
