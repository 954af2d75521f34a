"""Inner-run length schedules: how many steps each inner training run lasts before it restarts."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from meta_train.registry import register_horizon

Array = jax.Array


class Horizon:
    """A distribution over inner-run lengths, sampled afresh at every restart."""

    min_length: int
    max_length: int
    stagger: bool = True

    def sample(self, key: Array) -> Array:
        """Returns one inner-run length as an int32 scalar."""
        raise NotImplementedError

    def sample_first(self, key: Array) -> Array:
        """Returns the length of a task's first run: uniform in [1, a sampled length] when staggering, so tasks do not restart together."""
        full_key, cut_key = jax.random.split(key)
        if not self.stagger:
            return self.sample(full_key)
        full = self.sample(full_key)
        return jax.random.randint(cut_key, (), 1, full + 1, dtype=jnp.int32)


@register_horizon("constant")
class ConstantHorizon(Horizon):
    """Every inner run lasts exactly `length` steps."""

    def __init__(self, length: int = 200, stagger: bool = True):
        self.stagger = bool(stagger)
        if int(length) < 1:
            raise ValueError(f"horizon length must be >= 1, got {length}")
        self.length = int(length)
        self.min_length = self.max_length = self.length

    def sample(self, key: Array) -> Array:
        """Returns `length`."""
        del key
        return jnp.asarray(self.length, jnp.int32)

    def __repr__(self) -> str:
        return f"ConstantHorizon({self.length})"


@register_horizon("log_uniform")
class LogUniformHorizon(Horizon):
    """Inner-run lengths drawn log-uniformly from [low, high]."""

    def __init__(self, low: int = 100, high: int = 1000, stagger: bool = True):
        self.stagger = bool(stagger)
        if not 1 <= int(low) <= int(high):
            raise ValueError(f"need 1 <= low <= high for a log-uniform horizon, got low={low}, high={high}")
        self.min_length, self.max_length = int(low), int(high)

    def sample(self, key: Array) -> Array:
        """Returns round(exp(u)) for u uniform in [log low, log high]."""
        log_length = jax.random.uniform(
            key, (), jnp.float32, math.log(self.min_length), math.log(self.max_length)
        )
        length = jnp.round(jnp.exp(log_length)).astype(jnp.int32)
        return jnp.clip(length, self.min_length, self.max_length)

    def __repr__(self) -> str:
        return f"LogUniformHorizon({self.min_length}, {self.max_length})"
