"""Accumulators and per-parameter input features as google/learned_optimization computes them.

`lopt.adafactor_features` is this project's own, paper-derived version. Published
meta-parameters (AdafacMLPLOpt, Celo) were trained on these definitions instead, so their
optimizers (`adafac_mlp_lo`, `celo_lo`) read them from here. The differences:

- accumulators are channel-last (`[..., decays]`), and scalars are treated as shape-(1,) tensors;
- the second moment is factored over a tensor's two largest axes (ties: the later axis), not
  its last two; what the reference calls the row factor averages g^2 over the largest axis;
- features include the raw row and column moments as well as `rsqrt(moment + 1e-8)`;
  `rsqrt(rms + 1e-6)`; the factored preconditioner `rsqrt(max(row / (mean row + 1e-9), 1e-9))`;
- decays are not clipped for momenta but clipped to [0, 1] for second moments.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from lopt.adafactor_features import Decays

Array = jax.Array

EPSILON = 1e-30
NORMALIZER_EPS = 1e-5


class FactoredMoments(NamedTuple):
    """EMAs of g^2 + 1e-30: `row` and `col` (each `[..., K]`) for tensors with two or more axes, else `full`."""

    row: Optional[Array]
    col: Optional[Array]
    full: Optional[Array]


class Accumulators(NamedTuple):
    """Per-tensor accumulators, each a tree shaped like the params (scalars as (1,)) with a trailing decay axis."""

    momenta: Any
    rms: Any
    factored: Any


def factored_dims(shape: Sequence[int]) -> Optional[Tuple[int, int]]:
    """Returns `(second largest axis, largest axis)` of a tensor with at least two axes, else None."""
    if len(shape) < 2:
        return None
    order = np.argsort(np.asarray(shape), kind="stable")
    return int(order[-2]), int(order[-1])


def as_tensor(x: Array) -> Array:
    """Returns `x` as an array with at least one axis (a scalar becomes shape (1,))."""
    x = jnp.asarray(x)
    return x.reshape(1) if x.ndim == 0 else x


def safe_rsqrt(x: Array) -> Array:
    """Returns rsqrt(max(x, 1e-9))."""
    return jax.lax.rsqrt(jnp.maximum(x, 1e-9))


def init_accumulators(params: Any, num_momenta: int, num_rms: int, num_factored: int) -> Accumulators:
    """Returns zero accumulators for `params`."""

    def zeros(p: Array, k: int) -> Array:
        return jnp.zeros(as_tensor(p).shape + (k,), jnp.float32)

    def factored(p: Array) -> FactoredMoments:
        shape = as_tensor(p).shape
        dims = factored_dims(shape)
        if dims is None:
            return FactoredMoments(None, None, jnp.zeros(shape + (num_factored,), jnp.float32))
        second, largest = dims
        row = jnp.zeros(tuple(np.delete(shape, largest)) + (num_factored,), jnp.float32)
        col = jnp.zeros(tuple(np.delete(shape, second)) + (num_factored,), jnp.float32)
        return FactoredMoments(row, col, None)

    return Accumulators(
        jax.tree.map(lambda p: zeros(p, num_momenta), params),
        jax.tree.map(lambda p: zeros(p, num_rms), params),
        jax.tree.map(factored, params),
    )


def _update_factored(moments: FactoredMoments, g: Array, decays: Array) -> Tuple[FactoredMoments, Array]:
    decays = jnp.clip(decays, 0.0, 1.0)
    squared = (g * g + EPSILON)[..., None]
    dims = factored_dims(g.shape)
    if dims is None:
        full = decays * moments.full + (1.0 - decays) * squared
        return FactoredMoments(None, None, full), g[..., None] * safe_rsqrt(full + 1e-9)
    second, largest = dims
    row = decays * moments.row + (1.0 - decays) * jnp.mean(squared, axis=largest)
    col = decays * moments.col + (1.0 - decays) * jnp.mean(squared, axis=second)
    return FactoredMoments(row, col, None), precondition(g[..., None], row, col, dims)


def precondition(x: Array, row: Array, col: Array, dims: Tuple[int, int]) -> Array:
    """Returns `x [..., K]` times the factored preconditioner `rsqrt(row / mean(row)) * rsqrt(col)` of each decay."""
    second, largest = dims
    row_axis_of_second = second - 1 if second > largest else second
    row_mean = jnp.mean(row, axis=row_axis_of_second, keepdims=True)
    row_factor = safe_rsqrt(row / (row_mean + 1e-9))
    return x * jnp.expand_dims(row_factor, largest) * jnp.expand_dims(safe_rsqrt(col), second)


def update_accumulators(accumulators: Accumulators, grads: Any, decays: Decays) -> Tuple[Accumulators, Any]:
    """Advances every accumulator one step with `grads`; also returns the factored-preconditioned gradients."""
    grads = jax.tree.map(lambda g: as_tensor(g).astype(jnp.float32), grads)
    momenta = jax.tree.map(lambda m, g: decays.momentum * m + (1.0 - decays.momentum) * g[..., None],
                           accumulators.momenta, grads)
    rms_decays = jnp.clip(decays.rms, 0.0, 1.0)
    rms = jax.tree.map(lambda v, g: rms_decays * v + (1.0 - rms_decays) * (g * g)[..., None],
                       accumulators.rms, grads)
    grad_leaves, treedef = jax.tree.flatten(grads)
    factored_leaves = treedef.flatten_up_to(accumulators.factored)
    updated = [_update_factored(f, g, decays.factored) for f, g in zip(factored_leaves, grad_leaves)]
    factored = treedef.unflatten([moments for moments, _ in updated])
    preconditioned = treedef.unflatten([y for _, y in updated])
    return Accumulators(momenta, rms, factored), preconditioned


def feature_groups(
    g: Array, p: Array, m: Array, rms: Array, preconditioned: Array, moments: FactoredMoments,
    unfactored_momentum_eps: float = 0.0,
) -> Dict[str, Array]:
    """Returns one tensor's named feature groups, each `[..., channels]` (unnormalised).

    `g` and `p` have the tensor's shape (at least one axis); the other arguments are its
    accumulators. Groups: g, clipped_g (g clipped to +-0.1), p, m, rms, m_rsqrt_rms,
    rsqrt_rms, preconditioned_g, g_rsqrt_rms, row, col, rsqrt_row, rsqrt_col, m_preconditioned.
    Unfactored tensors use their full moment for both row and column groups, and
    `m * (v + unfactored_momentum_eps) ** -0.5` as m_preconditioned.
    """
    rsqrt_rms = jax.lax.rsqrt(rms + 1e-6)
    groups = {
        "g": g[..., None],
        "clipped_g": jnp.clip(g, -0.1, 0.1)[..., None],
        "p": p[..., None],
        "m": m,
        "rms": rms,
        "m_rsqrt_rms": m * rsqrt_rms,
        "rsqrt_rms": rsqrt_rms,
        "preconditioned_g": preconditioned,
        "g_rsqrt_rms": g[..., None] * rsqrt_rms,
    }
    dims = factored_dims(g.shape)
    if dims is None:
        v = moments.full
        row = col = v
        momentum_preconditioned = m * (v + unfactored_momentum_eps) ** -0.5
    else:
        second, largest = dims
        row = jnp.broadcast_to(jnp.expand_dims(moments.row, largest), g.shape + moments.row.shape[-1:])
        col = jnp.broadcast_to(jnp.expand_dims(moments.col, second), g.shape + moments.col.shape[-1:])
        momentum_preconditioned = precondition(m, moments.row, moments.col, dims)
    groups.update(row=row, col=col, rsqrt_row=jax.lax.rsqrt(row + 1e-8), rsqrt_col=jax.lax.rsqrt(col + 1e-8),
                  m_preconditioned=momentum_preconditioned)
    return groups


def second_moment_normalize(x: Array) -> Array:
    """Scales each channel (last axis) of `x` by rsqrt(1e-5 + its mean square over all other axes)."""
    axes = tuple(range(x.ndim - 1))
    return x * jax.lax.rsqrt(NORMALIZER_EPS + jnp.mean(jnp.square(x), axis=axes, keepdims=True))


def reparameterized_decays(defaults: Sequence[float], offsets: Array) -> Array:
    """Returns `1 - exp(10 (log(1 - default) / 10 + offset))`: learned_optimization's decay parameterisation."""
    return 1.0 - jnp.exp((jnp.log(1.0 - jnp.asarray(defaults, jnp.float32)) / 10.0 + offsets) * 10.0)
