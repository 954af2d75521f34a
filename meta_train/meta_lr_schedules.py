"""The meta-learning-rate schedules a config can name (`config.meta_train.meta_lr_schedule`)."""

from __future__ import annotations

from typing import Union

import optax

from meta_train.registry import register_meta_lr_schedule


@register_meta_lr_schedule("constant")
def constant(learning_rate: float) -> float:
    """The meta-learning rate itself, at every meta-step."""
    return float(learning_rate)


@register_meta_lr_schedule("cosine")
def cosine(learning_rate: float, decay_steps: int, final_fraction: float = 0.1) -> Union[float, optax.Schedule]:
    """Cosine decay over `decay_steps` meta-steps to `final_fraction` of `learning_rate`, then flat there."""
    if int(decay_steps) < 1:
        raise ValueError(f"decay_steps must be >= 1, got {decay_steps}")
    if not 0.0 < float(final_fraction) <= 1.0:
        raise ValueError(f"final_fraction must lie in (0, 1], got {final_fraction}")
    return optax.cosine_decay_schedule(float(learning_rate), int(decay_steps), float(final_fraction))
