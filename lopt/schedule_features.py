"""Task-agnostic inputs for learning-rate schedulers and hypernetworks: training fraction and loss progress.

When `num_steps` is None the run length is unknown and taken to be DEFAULT_NUM_STEPS (10,000),
so the fraction grows slowly. When no loss is passed (`update(..., loss=None)`) the loss
statistics stay at their initial values and every loss feature is 0 (neutral).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from lopt.base import NumSteps

Array = jax.Array

DEFAULT_NUM_STEPS = 10_000
FRACTION_CENTERS = (0.1, 0.25, 0.5, 0.75, 0.9)
NUM_FRACTION_FEATURES = 1 + len(FRACTION_CENTERS)
LOSS_DECAYS = (0.9, 0.99)
NUM_LOSS_FEATURES = 4


class LossState(NamedTuple):
    """Running loss statistics: first finite loss, fast and slow EMAs, minimum, and how many were seen."""

    first: Array
    fast: Array
    slow: Array
    minimum: Array
    count: Array


def training_fraction(iteration: Array, num_steps: NumSteps) -> Array:
    """Returns iteration / num_steps clipped to [0, 1]; num_steps None means DEFAULT_NUM_STEPS."""
    total = DEFAULT_NUM_STEPS if num_steps is None else num_steps
    total = jnp.maximum(jnp.asarray(total, jnp.float32), 1.0)
    return jnp.clip(jnp.asarray(iteration, jnp.float32) / total, 0.0, 1.0)


def fraction_features(fraction: Array) -> Array:
    """Returns [fraction, tanh(10 (fraction - c)) for each centre c]: NUM_FRACTION_FEATURES values."""
    centers = jnp.asarray(FRACTION_CENTERS, jnp.float32)
    return jnp.concatenate([fraction[None], jnp.tanh(10.0 * (fraction - centers))])


def init_loss_state() -> LossState:
    """Returns the statistics of a run that has seen no loss yet."""
    zero = jnp.zeros((), jnp.float32)
    return LossState(zero, zero, zero, zero, jnp.zeros((), jnp.int32))


def update_loss_state(state: LossState, loss: Optional[Array]) -> LossState:
    """Folds one loss into the statistics; None and non-finite losses leave them unchanged."""
    if loss is None:
        return state
    loss = jnp.asarray(loss, jnp.float32).reshape(())
    valid = jnp.isfinite(loss)
    first_seen = state.count == 0
    fast_decay, slow_decay = LOSS_DECAYS
    updated = LossState(
        first=jnp.where(first_seen, loss, state.first),
        fast=jnp.where(first_seen, loss, fast_decay * state.fast + (1 - fast_decay) * loss),
        slow=jnp.where(first_seen, loss, slow_decay * state.slow + (1 - slow_decay) * loss),
        minimum=jnp.where(first_seen, loss, jnp.minimum(state.minimum, loss)),
        count=state.count + 1,
    )
    return jax.tree.map(lambda new, old: jnp.where(valid, new, old), updated, state)


def loss_features(state: LossState) -> Array:
    """Returns NUM_LOSS_FEATURES values in [-1, 1].

    They are tanh of (fast EMA - first loss), (fast - slow EMA) and (fast EMA - minimum), each
    relative to |first loss|, and 1 once any loss was seen; all 0 before that.
    """
    scale = jnp.maximum(jnp.abs(state.first), 1e-30)
    seen = (state.count > 0).astype(jnp.float32)
    relative = lambda a, b: jnp.tanh((a - b) / scale)
    return seen * jnp.stack(
        [relative(state.fast, state.first), relative(state.fast, state.slow), relative(state.fast, state.minimum),
         jnp.ones(())]
    )
