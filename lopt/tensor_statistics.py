"""Per-tensor summary statistics that per-tensor networks (hypernetworks, learned-hyperparameter Adam) read."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lopt.normalization import cosine_similarity, log_rms

Array = jax.Array

LOG_SCALE = 0.1


def num_statistics(num_momenta: int) -> int:
    """Number of values `tensor_statistics` returns for `num_momenta` momenta."""
    return 3 + 2 * num_momenta


def tensor_statistics(g: Array, p: Array, momenta: Array) -> Array:
    """Returns [log rms(g), log rms(p), log rms(m_k)..., cos(g, m_k)..., log size] for one tensor, logs scaled by 0.1.

    `momenta` is [K, ...] (leading decay axis). Every value is finite for any finite input.
    """
    num_momenta = momenta.shape[0]
    logs = [log_rms(g), log_rms(p)] + [log_rms(momenta[k]) for k in range(num_momenta)]
    cosines = [cosine_similarity(g, momenta[k]) for k in range(num_momenta)]
    size = jnp.log(jnp.asarray(max(g.size, 1), jnp.float32))
    return jnp.concatenate([LOG_SCALE * jnp.stack(logs), jnp.stack(cosines), (LOG_SCALE * size)[None]])
