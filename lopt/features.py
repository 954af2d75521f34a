"""Per-parameter input features shared by learned optimizers: momentum EMAs and time features.

Their normalisation is in lopt.normalization.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

MOMENTUM_DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)


def update_emas(emas: Array, value: Array, decays: Array, channel_axis: int = -1) -> Array:
    """Returns exponential moving averages of `value` advanced one step (no bias correction); channel k
    along `channel_axis` of `emas` decays with `decays[k]`."""
    shape = [1] * emas.ndim
    shape[channel_axis] = -1
    decays = jnp.reshape(decays, shape)
    return emas * decays + jnp.expand_dims(value, channel_axis) * (1.0 - decays)


def time_features(step: Array, scales: Sequence[float] = TIME_SCALES) -> Array:
    """Returns tanh(step / scale - 1) for each time scale: identical for every parameter."""
    return jnp.tanh(jnp.asarray(step, jnp.float32) / jnp.asarray(scales, jnp.float32) - 1.0)


def leaf_sizes(tree: Any) -> Tuple[int, ...]:
    """Returns the static number of elements of each leaf of `tree`, in tree order."""
    return tuple(int(np.prod(jnp.shape(x))) for x in jax.tree.leaves(tree))


# Names that moved to lopt.normalization, still importable from here for one release.
_MOVED_TO_NORMALIZATION = {
    "clip_magnitude": "clip_magnitude",
    "second_moment_normalize": "second_moment_normalize",
    "second_moment_factors": "second_moment_normalize_factors",
}


def __getattr__(name: str) -> Any:
    """Returns a name that moved to lopt.normalization, with a DeprecationWarning."""
    if name in _MOVED_TO_NORMALIZATION:
        from lopt import normalization
        new_name = _MOVED_TO_NORMALIZATION[name]
        warnings.warn(f"lopt.features.{name} is deprecated; use lopt.normalization.{new_name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(normalization, new_name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
