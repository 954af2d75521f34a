"""Truncated ES: antithetic evolution strategies on each truncation alone (no persistence, so biased)."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

from meta_train.pes import PES, PESState
from meta_train.registry import register_estimator
from meta_train.unroll import TruncatedUnroll

Array = jax.Array


@register_estimator("truncated_es")
class TruncatedES(PES):
    """Antithetic ES over one truncation: g = mean_tasks((L+ - L-) * eps) / (2 std^2).

    It shares PES's unroll state but forgets the perturbations of earlier truncations, so it
    ignores how theta shaped the inner state a truncation starts from (the short-horizon bias).
    """

    def estimate(
        self, unroll: TruncatedUnroll, meta_params: Any, state: PESState, key: Array, mask: Any = None
    ) -> Tuple[Any, PESState, Dict[str, Array]]:
        """Runs one truncation at theta +- eps and returns the truncated-ES meta-gradient."""
        forgotten = state._replace(accumulator=jax.tree.map(jnp.zeros_like, state.accumulator))
        return super().estimate(unroll, meta_params, forgotten, key, mask)
