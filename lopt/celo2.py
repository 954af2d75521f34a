"""Celo2 (Moudgil et al., ICLR 2026): a learned per-parameter update direction, scaled by a learning rate.

A ReLU MLP (two hidden layers of 8) reads 30 Adafactor-style channels per parameter of a tensor
with two or more dimensions (15 for vectors and scalars), each normalised by its second moment
over the tensor's last two axes, and outputs a direction that is itself normalised the same way
(after optional Newton-Schulz orthogonalisation of the tensor's last two axes). Parameters whose
path matches `adam_regex` take a plain Adam direction instead. The learning rate or schedule
multiplies the combined direction: `p <- p - lr_t * (direction + weight_decay * p)` for the learned
rule, whose direction has RMS 1 per tensor (per last-two-axes slice), so each such step has RMS
lr_t; `p <- p - lr_t * mult_1d * (adam + weight_decay * p)` for the Adam branch, as in the authors' code.

The definitions follow the authors' code (amoudgl/celo, `celo2_optax.py`), not
`lopt.adafactor_features`: the second moment is factored over a tensor's two largest axes
(`lopt.lo_features.factored_dims`, not its last two), the gradient is clipped to +-1000, and the
normalisers use eps 1e-9.

Channels, in the order of the first layer's rows (and of the authors' `w0__i` blocks):
g, clip(g, +-0.1), p, momenta (3), rms, momenta * rsqrt(rms + 1e-8) (3), rsqrt(rms + 1e-8),
g * F (3), g * rsqrt(rms + 1e-8), and for tensors with >= 2 dims: row second moment (3), column
second moment (3), their rsqrt(. + 1e-8) (3 + 3), momenta * F (3); F is Adafactor's factored
rsqrt of the second moment (per decay).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, NamedTuple, Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt.base import LearnedOptimizer, LearnedOptimizerError, MetaParams, NumSteps, register
from lopt.lo_features import EPSILON, factored_dims, safe_rsqrt
from lopt.tensor_map import map_block_ranges, map_block_starts, map_blocks, parameter_path

Array = jax.Array

MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
RMS_DECAY = 0.95
ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
NS_COEFFS = (3.4445, -4.7750, 2.0315)
DEFAULT_ADAM_REGEX = r"/b$|^scale$"
SCHEDULES = ("constant", "cosine", "warmup_cosine")
NUM_VECTOR_CHANNELS = 15
NUM_CHANNELS = 30
GRAD_CLIP = 1000.0
HIDDEN_SIZE = 8
# Parameters the per-parameter MLP evaluates together: its [8, block] intermediates stay in cache.
COLUMN_BLOCK = 8192


class Celo2Moments(NamedTuple):
    """One tensor's learned-rule accumulators, channel-major: `momenta` [3, ...], `rms` [1, ...], and the
    Adafactor second moments `row` [3, shape without the largest axis] and `col` [3, shape without the
    second largest] for tensors with >= 2 dims, else `full` [3, ...]."""

    momenta: Array
    rms: Array
    row: Optional[Array]
    col: Optional[Array]
    full: Optional[Array]


class Celo2RuleState(NamedTuple):
    """Per-leaf `Celo2Moments` (a tree like the params it was given) and the step count."""

    moments: Any
    iteration: Array


class Celo2AdamState(NamedTuple):
    """The Adam branch's first and second moments (trees like its params), without bias correction."""

    mu: Any
    nu: Any


class Celo2Error(LearnedOptimizerError):
    """A Celo2 optimizer was built with invalid arguments or given meta-parameters it cannot read."""


def adam_branch_labels(params: Any, adam_regex: Optional[str]) -> Any:
    """Returns a tree like `params` labelling each leaf "adam" (its path matches `adam_regex`) or "rule"."""
    pattern = re.compile(adam_regex) if adam_regex else None
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "adam" if pattern is not None and pattern.search(parameter_path(path)) else "rule", params)


def _init_moments(p: Array) -> Celo2Moments:
    shape = tuple(p.shape)
    momenta = jnp.zeros((len(MOMENTUM_DECAYS),) + shape, jnp.float32)
    rms = jnp.zeros((1,) + shape, jnp.float32)
    k = len(ADAFACTOR_DECAYS)
    dims = factored_dims(shape)
    if dims is None:
        return Celo2Moments(momenta, rms, None, None, jnp.zeros((k,) + shape, jnp.float32))
    second, largest = dims
    row = jnp.zeros((k,) + tuple(np.delete(shape, largest)), jnp.float32)
    col = jnp.zeros((k,) + tuple(np.delete(shape, second)), jnp.float32)
    return Celo2Moments(momenta, rms, row, col, None)


def _ema(old: Array, value: Array, decays: Tuple[float, ...]) -> Array:
    d = jnp.asarray(decays, jnp.float32).reshape((-1,) + (1,) * (old.ndim - 1))
    return d * old + (1.0 - d) * value[None]


def _update_moments(moments: Celo2Moments, g: Array) -> Celo2Moments:
    momenta = _ema(moments.momenta, g, MOMENTUM_DECAYS)
    rms = _ema(moments.rms, g * g, (RMS_DECAY,))
    squared = g * g + EPSILON
    dims = factored_dims(g.shape)
    if dims is None:
        return Celo2Moments(momenta, rms, None, None, _ema(moments.full, squared, ADAFACTOR_DECAYS))
    second, largest = dims
    row = _ema(moments.row, jnp.mean(squared, axis=largest), ADAFACTOR_DECAYS)
    col = _ema(moments.col, jnp.mean(squared, axis=second), ADAFACTOR_DECAYS)
    return Celo2Moments(momenta, rms, row, col, None)


def _factored_rsqrt(moments: Celo2Moments, shape: Tuple[int, ...]) -> Array:
    """Adafactor's rsqrt second-moment estimate F [3, *shape] of one tensor (the `fac_g / g` of the authors)."""
    dims = factored_dims(shape)
    if dims is None:
        return safe_rsqrt(moments.full + 1e-9)
    second, largest = dims
    second_in_row = second - 1 if second > largest else second
    row_mean = jnp.mean(moments.row, axis=1 + second_in_row, keepdims=True)
    row_factor = safe_rsqrt(moments.row / (row_mean + 1e-9))
    col_factor = safe_rsqrt(moments.col)
    return jnp.expand_dims(row_factor, 1 + largest) * jnp.expand_dims(col_factor, 1 + second)


def _normalize_last_two(x: Array, num_leading: int) -> Array:
    """Scales `x` by rsqrt(1e-9 + mean square) over its last two axes (its only axis after `num_leading`)."""
    axes = tuple(range(max(num_leading, x.ndim - 2), x.ndim))
    return x * jax.lax.rsqrt(1e-9 + jnp.mean(jnp.square(x), axis=axes, keepdims=True))


def tensor_channels(g: Array, p: Array, moments: Celo2Moments) -> Array:
    """Returns one tensor's unnormalised input channels [30, *shape] (15 for fewer than 2 dims), in the
    order of the module docstring; `g` is the clipped float32 gradient and `moments` already include it."""
    shape = tuple(g.shape)
    m = moments.momenta
    rsqrt_rms = jax.lax.rsqrt(moments.rms + 1e-8)
    factor = _factored_rsqrt(moments, shape)
    channels = [g[None], jnp.clip(g, -0.1, 0.1)[None], p[None], m, moments.rms, m * rsqrt_rms, rsqrt_rms,
                g[None] * factor, g[None] * rsqrt_rms]
    dims = factored_dims(shape)
    if dims is not None:
        second, largest = dims
        k = moments.row.shape[0]
        row = jnp.broadcast_to(jnp.expand_dims(moments.row, 1 + largest), (k,) + shape)
        col = jnp.broadcast_to(jnp.expand_dims(moments.col, 1 + second), (k,) + shape)
        channels += [row, col, jax.lax.rsqrt(row + 1e-8), jax.lax.rsqrt(col + 1e-8), m * factor]
    return jnp.concatenate(channels, axis=0)


def newton_schulz(x: Array, num_steps: int = 5, coeffs: Tuple[float, float, float] = NS_COEFFS,
                  eps: float = 1e-8) -> Array:
    """Returns the quintic Newton-Schulz orthogonalisation of `x` over its last two axes (Muon's iteration).

    With x of shape [r, c] (r <= c, else transposed), normalised by its Frobenius norm, each step
    is x <- (a I + b G + c G^2) x with G = x x^T. When c >= 2 r the same polynomial is
    accumulated on the r x r Gram matrix instead (x_k = P_k x_0 and G_k = P_k G_0 P_k, as P_k
    is a polynomial in G_0), so the [r, c] matrix is multiplied twice rather than ten times
    (a 3072 x 128 step: 9.3 ms -> 2.3 ms here, with the same float32 error against float64).
    """
    if x.ndim < 2:
        raise Celo2Error(f"newton_schulz needs an array with >= 2 dims, got shape {x.shape}")
    a, b, c = coeffs
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = jnp.swapaxes(x, -2, -1)
    x = x / (jnp.linalg.norm(x, axis=(-2, -1), keepdims=True) + eps)
    if x.shape[-1] < 2 * x.shape[-2] or num_steps == 0:
        for _ in range(num_steps):
            gram = x @ jnp.swapaxes(x, -2, -1)
            x = a * x + (b * gram + c * gram @ gram) @ x
    else:
        gram = x @ jnp.swapaxes(x, -2, -1)
        identity = jnp.eye(x.shape[-2], dtype=x.dtype)
        product = None
        for step in range(num_steps):
            polynomial = a * identity + b * gram + c * gram @ gram
            product = polynomial if product is None else polynomial @ product
            if step < num_steps - 1:
                gram = polynomial @ (gram @ polynomial)
        x = product @ x
    return jnp.swapaxes(x, -2, -1) if transposed else x


def _mlp_directions(mlp: MetaParams, columns: Array) -> Array:
    """Returns the MLP's direction output [N] for normalised channel-major inputs [C, N]."""
    hidden = jax.nn.relu(mlp["w0"][:columns.shape[0]].T @ columns + mlp["b0"][:, None])
    hidden = jax.nn.relu(mlp["w1"].T @ hidden + mlp["b1"][:, None])
    return (mlp["w2"].T @ hidden + mlp["b2"][:, None])[0]


def _finish_direction(direction: Array, shape: Tuple[int, ...], orthogonalize: bool, ns_steps: int,
                      ns_coeffs: Tuple[float, float, float], ns_eps: float) -> Array:
    if orthogonalize and len(shape) >= 2:
        direction = newton_schulz(direction, ns_steps, ns_coeffs, ns_eps)
    return _normalize_last_two(direction, 0).reshape(shape)


def tensor_direction(mlp: MetaParams, g: Array, p: Array, moments: Celo2Moments, orthogonalize: bool,
                     ns_steps: int = 5, ns_coeffs: Tuple[float, float, float] = NS_COEFFS,
                     ns_eps: float = 1e-8, block_size: int = COLUMN_BLOCK) -> Array:
    """Returns one tensor's Celo2 direction (shape of `p`, float32) from its clipped gradient and updated moments,
    computed literally: every channel materialised, normalised, then the MLP. Tensors other than matrices use it;
    the folded and blocked `matrix_direction` is tested against it."""
    shape = tuple(p.shape)
    channels = tensor_channels(g, p.astype(jnp.float32), moments)
    if not shape:
        channels = channels[:, None]
    normalized = _normalize_last_two(channels, 1)
    columns = normalized.reshape(normalized.shape[0], -1)
    direction = map_blocks(lambda block: _mlp_directions(mlp, block), columns, block_size, axis=1)
    direction = direction.reshape(channels.shape[1:])
    return _finish_direction(direction, shape, orthogonalize, ns_steps, ns_coeffs, ns_eps)


# The per-parameter channels of a matrix (all but its row and column statistics), as rows of the first layer.
_PER_PARAMETER_ROWS = np.r_[0:NUM_VECTOR_CHANNELS, NUM_CHANNELS - len(ADAFACTOR_DECAYS):NUM_CHANNELS]


def _matrix_block_channels(g: Array, p: Array, m: Array, rms: Array, row_factor: Array, col_factor: Array) -> Array:
    """Returns a block of a matrix's per-parameter channels [18, rows * cols] (`_PER_PARAMETER_ROWS` order)."""
    rsqrt_rms = jax.lax.rsqrt(rms + 1e-8)
    factor = row_factor * col_factor
    channels = jnp.concatenate([g[None], jnp.clip(g, -0.1, 0.1)[None], p[None], m, rms[None], m * rsqrt_rms[None],
                                rsqrt_rms[None], g[None] * factor, (g * rsqrt_rms)[None], m * factor])
    return channels.reshape(channels.shape[0], -1)


def matrix_direction(mlp: MetaParams, g: Array, p: Array, moments: Celo2Moments,
                     block_size: int = COLUMN_BLOCK) -> Array:
    """Returns a matrix's raw MLP direction (before orthogonalisation and output normalisation); a matrix of more
    than 2 * block_size parameters is computed `block_size` parameters at a time, so that no [channels, size]
    array of the whole matrix is written.

    Its 12 row and column statistic channels are per-row and per-column vectors, so their
    first-layer contributions are computed once per row and per column; the normalisation of the
    other 18 channels is folded into the first layer after a statistics pass over the blocks.
    """
    num_rows, num_cols = p.shape
    second, largest = factored_dims(p.shape)
    k = moments.row.shape[0]
    second_in_row = second - 1 if second > largest else second
    row_mean = jnp.mean(moments.row, axis=1 + second_in_row, keepdims=True)
    # A statistic that drops matrix axis a broadcasts along it: [k, 1, C] for a = 0, [k, R, 1] (row-indexed) for a = 1.
    expand = lambda stats, axis: (jnp.expand_dims(stats, 1 + axis), axis == 1)
    factors = (expand(safe_rsqrt(moments.row / (row_mean + 1e-9)), largest), expand(safe_rsqrt(moments.col), second))
    w0 = mlp["w0"]
    statistic_rows = NUM_VECTOR_CHANNELS + np.arange(4 * k).reshape(4, k)
    contributions = []
    for stats, direct_rows, inverse_rows, axis in ((moments.row, statistic_rows[0], statistic_rows[2], largest),
                                                   (moments.col, statistic_rows[1], statistic_rows[3], second)):
        inverse = jax.lax.rsqrt(stats + 1e-8)
        scaled = jnp.concatenate([
            stats * jax.lax.rsqrt(1e-9 + jnp.mean(jnp.square(stats), axis=1, keepdims=True)),
            inverse * jax.lax.rsqrt(1e-9 + jnp.mean(jnp.square(inverse), axis=1, keepdims=True))])
        contributions.append(expand(jnp.concatenate([w0[direct_rows], w0[inverse_rows]]).T @ scaled, axis))
    block_rows = max(1, block_size // num_cols)

    def block_channels(start, size):
        rows = lambda x, axis: jax.lax.dynamic_slice_in_dim(x, start, size, axis)
        block_factors = [rows(f, 1) if row_indexed else f for f, row_indexed in factors]
        return _matrix_block_channels(rows(g, 0), rows(p, 0), rows(moments.momenta, 1), rows(moments.rms[0], 0),
                                      *block_factors)

    if p.size <= 2 * block_size:
        block_rows = num_rows
        sums = jnp.sum(jnp.square(block_channels(0, num_rows)), axis=1)
    else:
        full_sums, partial_sums = map_block_starts(
            lambda start, size: jnp.sum(jnp.square(block_channels(start, size)), axis=1), num_rows, block_rows)
        sums = jnp.sum(full_sums, axis=0) + (0.0 if partial_sums is None else partial_sums)
    scales = jax.lax.rsqrt(1e-9 + sums / p.size)
    first_weight = w0[_PER_PARAMETER_ROWS].T

    def block_direction(start, size):
        extra = sum(jax.lax.dynamic_slice_in_dim(c, start, size, 1) if row_indexed else c
                    for c, row_indexed in contributions)
        first = (first_weight @ (block_channels(start, size) * scales[:, None])).reshape(w0.shape[1], size, num_cols)
        hidden = jax.nn.relu(first + extra + mlp["b0"][:, None, None]).reshape(w0.shape[1], -1)
        hidden = jax.nn.relu(mlp["w1"].T @ hidden + mlp["b1"][:, None])
        return (mlp["w2"].T @ hidden + mlp["b2"][:, None])[0].reshape(size, num_cols)

    if block_rows == num_rows:
        return block_direction(0, num_rows)
    return map_block_ranges(block_direction, num_rows, block_rows)


def rule_directions(mlp: MetaParams, grads: list, params: list, moments: list, orthogonalize: bool,
                    ns_steps: int = 5, ns_coeffs: Tuple[float, float, float] = NS_COEFFS, ns_eps: float = 1e-8,
                    block_size: int = COLUMN_BLOCK) -> list:
    """Returns the Celo2 directions (float32, shapes of `params`) of lists of tensors: clipped float32 gradients,
    parameters and their updated moments. Matrices go through `matrix_direction`, other tensors through
    `tensor_direction`."""
    directions = []
    for g, p, m in zip(grads, params, moments):
        if p.ndim == 2:
            raw = matrix_direction(mlp, g, p.astype(jnp.float32), m, block_size)
            directions.append(_finish_direction(raw, p.shape, orthogonalize, ns_steps, ns_coeffs, ns_eps))
        else:
            directions.append(tensor_direction(mlp, g, p, m, orthogonalize, ns_steps, ns_coeffs, ns_eps, block_size))
    return directions


def scale_by_celo2_rule(
    meta_params: MetaParams, *, orthogonalize: bool = True, ns_steps: int = 5,
    ns_coeffs: Tuple[float, float, float] = NS_COEFFS, ns_eps: float = 1e-8, block_size: int = COLUMN_BLOCK,
) -> optax.GradientTransformationExtraArgs:
    """Returns the bare learned Celo2 direction for every leaf (descent direction, no learning rate, no sign flip).

    Compose it with a learning rate, e.g. `optax.chain(scale_by_celo2_rule(theta),
    optax.scale_by_learning_rate(schedule))`; `update` needs `params`.
    """
    def init_fn(params):
        return Celo2RuleState(jax.tree.map(_init_moments, params), jnp.zeros((), jnp.int32))

    def update_fn(grads, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise Celo2Error("the celo2 learned optimizer needs params: call update(grads, state, params)")
        chex.assert_trees_all_equal_shapes(grads, params)
        grads = jax.tree.map(lambda g: jnp.clip(g.astype(jnp.float32), -GRAD_CLIP, GRAD_CLIP), grads)
        leaves, treedef = jax.tree.flatten(grads)
        moment_leaves = treedef.flatten_up_to(state.moments)
        moment_leaves = [_update_moments(m, g) for m, g in zip(moment_leaves, leaves)]
        param_leaves = treedef.flatten_up_to(params)
        directions = rule_directions(meta_params, leaves, param_leaves, moment_leaves, orthogonalize, ns_steps,
                                     ns_coeffs, ns_eps, block_size)
        directions = [d.astype(p.dtype) for d, p in zip(directions, param_leaves)]
        new_state = Celo2RuleState(treedef.unflatten(moment_leaves), optax.safe_increment(state.iteration))
        return treedef.unflatten(directions), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_celo2_adam(b1: float = 0.9, b2: float = 0.95, eps: float = 1e-8) -> optax.GradientTransformation:
    """Returns Celo2's Adam branch: m * rsqrt(v + eps) with EMAs m, v of g and g^2 and no bias correction."""
    def init_fn(params):
        zeros = lambda p: jnp.zeros(jnp.shape(p), jnp.float32)
        return Celo2AdamState(jax.tree.map(zeros, params), jax.tree.map(zeros, params))

    def update_fn(grads, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g.astype(jnp.float32), state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * jnp.square(g.astype(jnp.float32)), state.nu, grads)
        steps = jax.tree.map(lambda m, v, g: (m * jax.lax.rsqrt(v + eps)).astype(g.dtype), mu, nu, grads)
        return steps, Celo2AdamState(mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def schedule_multiplier(schedule: str, count: Array, num_steps: NumSteps, warmup_fraction: float = 0.05,
                        final_fraction: float = 0.0) -> Array:
    """Returns the learning-rate multiplier at step `count` (0-based) of a `num_steps` run for a named schedule.

    "constant" is 1; "cosine" decays from 1 to `final_fraction` at `num_steps`; "warmup_cosine"
    first rises linearly over `warmup_fraction` of the run (from 1 / warmup steps to 1).
    """
    if schedule == "constant":
        return jnp.ones((), jnp.float32)
    if num_steps is None:
        raise Celo2Error(f"the {schedule!r} schedule needs the run length: call transformation(meta_params, num_steps=N)")
    t = jnp.asarray(count, jnp.float32)
    total = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
    warmup = warmup_fraction * total if schedule == "warmup_cosine" else jnp.zeros((), jnp.float32)
    ramp = jnp.where(warmup > 0, jnp.minimum((t + 1.0) / jnp.maximum(warmup, 1.0), 1.0), 1.0)
    progress = jnp.clip((t - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    return ramp * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))


def _reference_leaf_name(key: str) -> Optional[str]:
    match = re.search(r"(w0__\d+|w\d+|b\d+)\W*$", key)
    return match.group(1) if match else None


def celo2_meta_params_from_reference(reference: Mapping[str, Any]) -> MetaParams:
    """Returns lopt's Celo2 meta-params from the authors' theta (their `{"ff_mod_stack": {"~": {...}}}`
    tree, or a flat mapping whose keys end in the haiku names `w0__<i>`, `w1`, `b0`, ... such as
    `theta/['ff_mod_stack']['~']['w0__3']`).

    The first layer's 14 input blocks are stacked in order into `w0` [30, 8]; of the 3 outputs
    only the direction (column 0) is kept, since the authors' configuration uses exp_mult=0.
    """
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(dict(reference))[0]:
        name = _reference_leaf_name(parameter_path(path))
        if name is not None:
            flat[name] = np.asarray(leaf, np.float32)
    blocks = sorted((int(k.split("__")[1]), v) for k, v in flat.items() if k.startswith("w0__"))
    missing = [k for k in ("b0", "w1", "b1", "w2", "b2") if k not in flat]
    if missing or [i for i, _ in blocks] != list(range(len(blocks))) or not blocks:
        raise Celo2Error(f"not a Celo2 reference theta: need w0__0.. w0__N, b0, w1, b1, w2, b2; missing "
                         f"{missing or 'w0__ blocks'} among keys {sorted(flat)}")
    w0 = np.concatenate([v for _, v in blocks], axis=0)
    if w0.shape[0] != NUM_CHANNELS or flat["w2"].ndim != 2:
        raise Celo2Error(f"reference theta has {w0.shape[0]} first-layer inputs, expected {NUM_CHANNELS}")
    return {
        "w0": jnp.asarray(w0), "b0": jnp.asarray(flat["b0"]),
        "w1": jnp.asarray(flat["w1"]), "b1": jnp.asarray(flat["b1"]),
        "w2": jnp.asarray(flat["w2"][:, :1]), "b2": jnp.asarray(flat["b2"][:1]),
    }


@register("celo2")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Celo2(LearnedOptimizer):
    """Celo2: a learned per-parameter direction (Newton-Schulz orthogonalised if `orthogonalize`) times a learning rate.

    `orthogonalize=False` is the authors' Celo2-base. Leaves whose "/"-joined path matches
    `adam_regex` (default: haiku biases `.../b` and a top-level `scale`; use e.g. `bias|embed` for
    flax names, or "" for none) take Adam's direction times `mult_1d` instead. The step at
    0-based step t of a `num_steps` run is `-learning_rate * schedule(t) * (direction + weight_decay * p)`.
    """

    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_fraction: float = 0.05
    final_fraction: float = 0.0
    weight_decay: float = 0.0
    orthogonalize: bool = True
    adam_regex: str = DEFAULT_ADAM_REGEX
    mult_1d: float = 20.0
    adam_b1: float = 0.9
    adam_b2: float = 0.95
    adam_eps: float = 1e-8
    ns_steps: int = 5
    ns_coeffs: Tuple[float, float, float] = NS_COEFFS
    ns_eps: float = 1e-8

    def __post_init__(self) -> None:
        """Converts the fields to their declared types (no `adam_regex`, None, is "") and checks them."""
        if self.schedule not in SCHEDULES:
            raise Celo2Error(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if len(tuple(self.ns_coeffs)) != 3:
            raise Celo2Error(f"ns_coeffs must be 3 numbers, got {tuple(self.ns_coeffs)}")
        object.__setattr__(self, "adam_regex", self.adam_regex or "")
        super().__post_init__()
        if not (self.learning_rate > 0 and self.weight_decay >= 0 and self.mult_1d > 0 and self.ns_steps >= 0):
            raise Celo2Error("need learning_rate > 0, weight_decay >= 0, mult_1d > 0 and ns_steps >= 0; got "
                             f"{self.learning_rate}, {self.weight_decay}, {self.mult_1d}, {self.ns_steps}")
        if not (0.0 <= self.warmup_fraction < 1.0 and 0.0 <= self.final_fraction <= 1.0):
            raise Celo2Error(f"need 0 <= warmup_fraction < 1 and 0 <= final_fraction <= 1; got "
                             f"{self.warmup_fraction}, {self.final_fraction}")
        try:
            re.compile(self.adam_regex)
        except re.error as error:
            raise Celo2Error(f"adam_regex {self.adam_regex!r} is not a regular expression: {error}") from None

    def init(self, key: Array) -> MetaParams:
        """Returns the MLP weights 30 -> 8 -> 8 -> 1: truncated normals (+-2 sd) of sd 1/sqrt(fan_in), zero biases."""
        sizes = (NUM_CHANNELS, HIDDEN_SIZE, HIDDEN_SIZE, 1)
        keys = jax.random.split(key, len(sizes) - 1)
        params = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            params[f"w{i}"] = jax.random.truncated_normal(keys[i], -2.0, 2.0, (fan_in, fan_out), jnp.float32) / math.sqrt(fan_in)
            params[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)
        return params

    def direction(self, meta_params: MetaParams) -> optax.GradientTransformationExtraArgs:
        """Returns the combined direction (learned rule, Adam branch times mult_1d, plus weight decay) before the
        learning rate: `optax.chain(celo2.direction(theta), optax.scale_by_learning_rate(schedule))` is the optimizer."""
        rule = scale_by_celo2_rule(meta_params, orthogonalize=self.orthogonalize, ns_steps=self.ns_steps,
                                   ns_coeffs=self.ns_coeffs, ns_eps=self.ns_eps)
        adam = optax.chain(scale_by_celo2_adam(self.adam_b1, self.adam_b2, self.adam_eps),
                           optax.add_decayed_weights(self.weight_decay), optax.scale(self.mult_1d))
        rule = optax.chain(rule, optax.add_decayed_weights(self.weight_decay))
        adam_regex = self.adam_regex
        return optax.partition({"rule": rule, "adam": adam}, lambda params: adam_branch_labels(params, adam_regex))

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None, learning_rate: Optional[Any] = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns Celo2 with meta-params `meta_params` at `learning_rate` times the schedule over `num_steps`.

        `learning_rate` (a float or a scalar array, possibly traced, e.g. one drawn per task) overrides
        the constructor's.
        """
        if self.schedule != "constant" and num_steps is None:
            raise Celo2Error(f"celo2 with schedule {self.schedule!r} needs the run length: "
                             "call transformation(meta_params, num_steps=N)")
        if learning_rate is None:
            learning_rate = self.learning_rate
        else:
            chex.assert_shape(learning_rate, ())
        schedule, warmup_fraction, final_fraction = self.schedule, self.warmup_fraction, self.final_fraction

        def step_size(count: Array) -> Array:
            return -learning_rate * schedule_multiplier(schedule, count, num_steps, warmup_fraction, final_fraction)

        return optax.chain(self.direction(meta_params), optax.scale_by_schedule(step_size))
