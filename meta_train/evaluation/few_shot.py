"""Few-shot evaluation: each N-way K-shot episode's query loss and accuracy after every inner step, learning
rates tuned once on meta-training episodes, and 95% confidence intervals over episodes.

An episode (a task of `tasks.few_shot`, or any family whose tasks have `apply(params, x)` logits)
starts from fresh weights, takes `num_steps` steps of the optimizer on its support set ("train"
split) and is measured on its query set (`split`, "valid" by default) before the first step and
after each step. Every optimizer evaluated with the same `episode_keys` sees the same episodes,
initial weights included, so differences between optimizers are paired.

Intervals follow the few-shot literature: mean +- 1.96 * sample standard deviation / sqrt(episodes).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from meta_train.evaluation.aggregates import IntervalEstimate
from tasks.base import TaskFamily

Array = jax.Array
Z_95 = 1.959963984540054  # the standard normal's 97.5th percentile


class EpisodeCurves(NamedTuple):
    """Query loss and accuracy per episode, before training and after each inner step: [episodes, num_steps + 1]."""

    losses: np.ndarray
    accuracies: np.ndarray


def mean_confidence_interval(values: Sequence[float], z: float = Z_95) -> IntervalEstimate:
    """Returns the mean of `values` with its normal-approximation interval mean -+ z * std(ddof=1) / sqrt(n).

    Non-finite values make the interval NaN, so a diverged episode is not silently dropped.
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"a confidence interval needs a 1-D array of at least 2 values, got shape {values.shape}")
    mean = float(np.mean(values))
    half_width = float(z * np.std(values, ddof=1) / math.sqrt(values.size))
    if not np.all(np.isfinite(values)):
        return IntervalEstimate(mean, math.nan, math.nan)
    return IntervalEstimate(mean, mean - half_width, mean + half_width)


def query_metrics(task: Any, params: Any, batch: Tuple[Array, Array]) -> Tuple[Array, Array]:
    """Returns (loss, accuracy) of `params` on a labelled batch: the task's own loss and the argmax hit rate."""
    x, y = batch
    loss = task.loss(params, jax.random.key(0), batch)
    accuracy = jnp.mean((jnp.argmax(task.apply(params, x), axis=-1) == y).astype(jnp.float32))
    return loss, accuracy


def _episode(family: TaskFamily, learned_optimizer: Any, meta_params: Any, key: Array, num_steps: int,
             split: str) -> Tuple[Array, Array]:
    cfg_key, init_key, loss_key = jax.random.split(key, 3)
    task = family.task(family.sample(cfg_key))
    params = task.init(init_key)
    support, query = task.sample_batch(loss_key, "train"), task.sample_batch(loss_key, split)
    transformation = learned_optimizer.transformation(meta_params, num_steps=num_steps)

    def step(carry, _):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(task.loss)(params, loss_key, support)
        updates, opt_state = transformation.update(grads, opt_state, params, loss=loss)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), query_metrics(task, params, query)

    first = query_metrics(task, params, query)
    _, (losses, accuracies) = jax.lax.scan(step, (params, transformation.init(params)), None, length=num_steps)
    return jnp.concatenate([first[0][None], losses]), jnp.concatenate([first[1][None], accuracies])


@functools.partial(jax.jit, static_argnames=("learned_optimizer", "num_steps", "split", "chunk"))
def _episodes(family, learned_optimizer, meta_params, keys, num_steps, split, chunk):
    return jax.lax.map(lambda key: _episode(family, learned_optimizer, meta_params, key, num_steps, split), keys,
                       batch_size=chunk)


def episode_curves(family: TaskFamily, learned_optimizer: Any, meta_params: Any, episode_keys: Array,
                   num_steps: int, *, split: str = "valid", chunk: int = 25) -> EpisodeCurves:
    """Runs one episode per key with the optimizer at `meta_params` and returns its query curves.

    Episodes run `chunk` at a time (vmapped), which bounds memory for per-parameter optimizers
    such as an LSTM whose state is 80 floats per weight.
    """
    if num_steps < 1 or chunk < 1:
        raise ValueError(f"num_steps and chunk must be >= 1, got {num_steps}, {chunk}")
    chex.assert_rank(jax.random.key_data(episode_keys), 2)
    losses, accuracies = _episodes(family, learned_optimizer, meta_params, episode_keys, int(num_steps), split,
                                   int(min(chunk, episode_keys.shape[0])))
    return EpisodeCurves(np.asarray(losses), np.asarray(accuracies))


class LearningRateChoice(NamedTuple):
    """The learning rate with the lowest mean query loss after the tuning horizon, and every rate's mean loss."""

    learning_rate: float
    mean_losses: Tuple[float, ...]
    at_grid_edge: bool


def tune_learning_rate(family: TaskFamily, baseline: Any, learning_rates: Sequence[float], episode_keys: Array,
                       num_steps: int, *, split: str = "valid", chunk: int = 25) -> LearningRateChoice:
    """Returns the one learning rate of hand-designed `baseline` (for all episodes) whose mean query loss after
    `num_steps` inner steps on the episodes of `episode_keys` is lowest; a diverged rate's mean counts as +inf.

    Tune on meta-training episodes: picking a rate per test episode would read its query labels.
    """
    if not learning_rates:
        raise ValueError("tune_learning_rate needs at least one learning rate")
    means = []
    for rate in learning_rates:
        curves = episode_curves(family, baseline, baseline.with_learning_rate(None, rate), episode_keys, num_steps,
                                split=split, chunk=chunk)
        final = curves.losses[:, -1]
        means.append(float(np.mean(final)) if np.all(np.isfinite(final)) else math.inf)
    best = int(np.argmin(means))
    return LearningRateChoice(float(learning_rates[best]), tuple(means), best in (0, len(learning_rates) - 1))
