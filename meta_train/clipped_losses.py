"""Telling the user when losses clipped at `max_meta_loss` leave meta-steps without a meta-gradient.

A normalised loss above `max_meta_loss` is replaced by that constant at both antithetic
particles, so its PES difference (and its backprop gradient) is exactly zero. When most of a
meta-step's losses are clipped, typically because a family's normalizer is off by 10x or
missing, meta-training silently stops learning; `ClippedLossWatch` says so once, in one line.
"""

from __future__ import annotations

import collections
import sys
from typing import Any, Deque, Dict, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

CLIPPED_MAJORITY = 0.5
MAX_PENDING_STEPS = 4


def clipped_loss_warning(
    metrics: Mapping[str, Any], family_names: Sequence[str], losses_per_family: int, max_meta_loss: float,
    step: int,
) -> Optional[str]:
    """Returns a one-line warning when more than half of some family's losses were clipped, else None.

    `metrics` are one meta-step's: `num_clipped` and `median_normalized_loss`, or for a
    mixture of families their `/<family name>` entries.
    """
    mixture = len(family_names) > 1
    worst: Optional[Tuple[float, str, float]] = None
    for name in family_names:
        suffix = f"/{name}" if mixture else ""
        fraction = float(np.asarray(metrics[f"num_clipped{suffix}"])) / losses_per_family
        median = float(np.asarray(metrics[f"median_normalized_loss{suffix}"]))
        if fraction > CLIPPED_MAJORITY and (worst is None or fraction > worst[0]):
            worst = (fraction, name, median)
    if worst is None:
        return None
    fraction, name, median = worst
    suggestion = f"above {10 * median:.3g} " if np.isfinite(median) and median > max_meta_loss else ""
    return (
        f"warning: at meta-step {step}, {fraction:.0%} of family {name}'s normalised losses (median {median:.3g}) "
        f"were above max_meta_loss={max_meta_loss:g} and clipped to it, so they give no meta-gradient; raise "
        f"max_meta_loss (config key meta_train.max_meta_loss) {suggestion}or make the family's normalizer map "
        f"its losses to about 1"
    )


class ClippedLossWatch:
    """Checks each meta-step's clipping metrics once they are computed, never waiting for them, and warns once.

    Metrics are looked at when their arrays are ready, so watching does not stall JAX's
    asynchronous dispatch; at most `MAX_PENDING_STEPS` steps are held back before the oldest
    is waited for. Only process 0 prints.
    """

    def __init__(self, family_names: Sequence[str], losses_per_family: int, max_meta_loss: float):
        self.family_names = list(family_names)
        self.losses_per_family = int(losses_per_family)
        self.max_meta_loss = float(max_meta_loss)
        self.warned = False
        self._pending: Deque[Tuple[Any, Dict[str, Any]]] = collections.deque()

    def _keys(self) -> Tuple[str, ...]:
        if len(self.family_names) == 1:
            return ("num_clipped", "median_normalized_loss")
        return tuple(f"{k}/{n}" for n in self.family_names for k in ("num_clipped", "median_normalized_loss"))

    def observe(self, step: Any, metrics: Mapping[str, Any]) -> None:
        """Queues meta-step `step`'s metrics and checks every queued step whose values are ready."""
        if self.warned:
            return
        self._pending.append((step, {k: metrics[k] for k in self._keys()}))
        while self._pending and (len(self._pending) > MAX_PENDING_STEPS or _ready(self._pending[0])):
            step, values = self._pending.popleft()
            message = clipped_loss_warning(
                values, self.family_names, self.losses_per_family, self.max_meta_loss, int(np.asarray(step))
            )
            if message is not None:
                self.warned = True
                self._pending.clear()
                if jax.process_index() == 0:
                    print(message, file=sys.stderr, flush=True)


def _ready(entry: Tuple[Any, Dict[str, Any]]) -> bool:
    step, values = entry
    return all(getattr(x, "is_ready", lambda: True)() for x in (step, *values.values()))
