"""The interface every meta-gradient estimator implements."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax

from meta_train.unroll import TruncatedUnroll

Array = jax.Array


class Estimator:
    """Estimates the meta-gradient of the meta-loss from truncations of inner training.

    `init` builds the estimator's state (the tasks' inner runs and anything persistent);
    `estimate` advances it by one truncation and returns (meta-gradient, new state, metrics).
    Both are pure functions, called inside jit.
    """

    num_tasks: int
    trunc_length: int
    num_particles: int = 1

    def sharding_prefix(self, by_task: Any, replicated: Any) -> Any:
        """Returns a pytree prefix of this estimator's state naming each part's sharding across devices.

        The default splits every leaf along its leading task axis.
        """
        del replicated
        return by_task

    def init(self, unroll: TruncatedUnroll, meta_params: Any, key: Array) -> Any:
        """Returns the estimator state for `meta_params`."""
        raise NotImplementedError

    def estimate(
        self, unroll: TruncatedUnroll, meta_params: Any, state: Any, key: Array, mask: Any = None
    ) -> Tuple[Any, Any, Dict[str, Array]]:
        """Returns (meta-gradient with the structure of meta_params, new state, scalar metrics).

        `mask` (a pytree of 0/1 floats shaped like meta_params, or None for all ones) marks the
        meta-params being trained; estimators must not perturb the others.
        """
        raise NotImplementedError
