"""Walk-forward evaluation of optimizers on daily refits: every day, every asset, from scratch and warm-started.

A desk refits its forecaster each day d on the trailing window before d and forecasts from d
on. `refit_runs` simulates that for one optimizer (or a grid of its meta-params, such as
learning rates) over a calendar of days and a set of assets, in two ways per day:

- from scratch: fresh weights from a key that depends only on (asset, day), the same for every
  optimizer;
- warm-started: yesterday's fitted weights of the same optimizer and grid point (the first
  day starts from scratch); the optimizer's state starts fresh each day.

Each refit takes `budget` full-batch steps and records the training loss and the
out-of-sample loss before every step and after the last. The family must provide
`refit_config(asset, end)` and its tasks a full-batch "train" split and `forecast_loss(params)`
(tasks.finance_daily.DailyRefitFamily does).

Tuning is walk-forward too: `choose_on_previous_period` picks, for every day of a period, the
grid point whose runs scored best over the previous period's days only, so no choice ever
reads a day on or after the first day of its own period.
"""

from __future__ import annotations

import datetime
import functools
from typing import Any, NamedTuple, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks.base import TaskFamily

Array = jax.Array
MODES = ("scratch", "warm")


class RefitRuns(NamedTuple):
    """Curves of daily refits, arrays [grid, assets, days, modes, budget + 1] (modes: MODES).

    `train_losses[..., k]` is the full-batch training loss after k steps and `oos_losses[..., k]`
    the out-of-sample loss (the next `oos_days` forecasts) of the same weights; index `budget`
    is the refit's final model.
    """

    train_losses: np.ndarray
    oos_losses: np.ndarray


def month_periods(calendar: np.ndarray) -> np.ndarray:
    """Returns the calendar month (year * 12 + month - 1) of each date in `calendar` (days since 1970-01-01)."""
    epoch = datetime.date(1970, 1, 1)
    dates = [epoch + datetime.timedelta(days=int(day)) for day in np.asarray(calendar)]
    return np.asarray([d.year * 12 + d.month - 1 for d in dates], np.int64)


def choose_on_previous_period(scores: np.ndarray, periods: np.ndarray, per_asset: bool = True) -> np.ndarray:
    """Returns the grid index chosen for every (day, asset): the lowest mean log score over the previous period's days.

    `scores` [grid, assets, days] (e.g. final training losses at each learning rate; non-finite
    counts as +inf) and `periods` [days], non-decreasing period labels. Days of the first period
    have no previous period and get -1. With `per_asset` False the mean also runs over assets,
    so every asset gets the same choice.
    """
    scores, periods = np.asarray(scores, np.float64), np.asarray(periods)
    chex.assert_rank(scores, 3)
    if periods.shape != scores.shape[2:] or np.any(np.diff(periods) < 0):
        raise ValueError(f"periods must be non-decreasing labels, one per day ({scores.shape[2]}), got {periods.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.where(np.isfinite(scores) & (scores > 0), np.log(scores), np.inf)
    choice = np.full(scores.shape[1:][::-1], -1, np.int64)  # [days, assets]
    labels = list(dict.fromkeys(periods.tolist()))
    for previous, current in zip(labels[:-1], labels[1:]):
        past = logs[:, :, periods == previous]
        mean = np.mean(past, axis=2) if per_asset else np.broadcast_to(np.mean(past, axis=(1, 2))[:, None], past.shape[:2])
        choice[periods == current] = np.argmin(mean, axis=0)[None, :]
    return choice


def take_choice(values: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """Returns `values` [grid, assets, days, ...] at the chosen grid index of every (day, asset): [assets, days, ...].

    `choice` [days, assets]; entries of -1 (no choice) give NaN.
    """
    values, choice = np.asarray(values), np.asarray(choice)
    chosen = np.take_along_axis(values, np.maximum(choice.T, 0).reshape((1,) + choice.T.shape + (1,) * (values.ndim - 3)),
                                axis=0)[0]
    mask = (choice.T < 0).reshape(choice.T.shape + (1,) * (values.ndim - 3))
    return np.where(mask, np.nan, chosen)


def scratch_init_key(seed: int, asset: Array, day: Array) -> Array:
    """Returns the key of the from-scratch weights of (asset, day): the same for every optimizer."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), asset), day)


def _fit(task: Any, transformation: optax.GradientTransformation, params: Any, budget: int):
    """Runs `budget` full-batch steps; returns final params and the train / out-of-sample losses [budget + 1]."""
    batch = task.sample_batch(None, "train")
    no_key = jax.random.key(0)

    def step(carry, _):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(task.loss)(params, no_key, batch)
        oos = task.forecast_loss(params)
        updates, opt_state = transformation.update(grads, opt_state, params, loss=loss)
        return (optax.apply_updates(params, updates), opt_state), (loss, oos)

    (params, _), (losses, oos) = jax.lax.scan(step, (params, transformation.init(params)), None, length=budget)
    final, final_oos = task.loss(params, no_key, batch), task.forecast_loss(params)
    return params, jnp.append(losses, final), jnp.append(oos, final_oos)


@functools.partial(jax.jit, static_argnames=("learned_optimizer", "budget", "seed"))
def _refit_grid(family, learned_optimizer, grid_meta_params, assets, ends, day_ids, budget, seed):
    def one_asset(meta_params, asset, asset_ends):
        transformation = learned_optimizer.transformation(meta_params, num_steps=budget)

        def one_day(warm_params, xs):
            end, day = xs
            task = family.task(family.refit_config(asset, end))
            fresh = task.init(scratch_init_key(seed, asset, day))
            warm = jax.tree.map(lambda w, f: jnp.where(day == day_ids[0], f, w), warm_params, fresh)
            starts = jax.tree.map(lambda f, w: jnp.stack([f, w]), fresh, warm)
            fitted, losses, oos = jax.vmap(lambda p: _fit(task, transformation, p, budget))(starts)
            return jax.tree.map(lambda x: x[1], fitted), (losses, oos)

        task0 = family.task(family.refit_config(asset, asset_ends[0]))
        placeholder = jax.tree.map(jnp.zeros_like, task0.init(jax.random.key(0)))
        _, (losses, oos) = jax.lax.scan(one_day, placeholder, (asset_ends, day_ids))
        return losses, oos

    per_grid = jax.vmap(one_asset, in_axes=(None, 0, 0))
    return jax.vmap(per_grid, in_axes=(0, None, None))(grid_meta_params, assets, ends)


def refit_runs(family: TaskFamily, learned_optimizer: Any, grid_meta_params: Any, assets: np.ndarray,
               ends: np.ndarray, budget: int, seed: int = 0, day_ids: np.ndarray = None) -> RefitRuns:
    """Refits every asset on every day with the optimizer at each meta-params of the grid (leading axis).

    `assets` [assets] indexes the family's assets; `ends` [assets, days] is each asset's refit
    day index on each calendar day (family.refit_ends); `day_ids` [days] label the days for the
    from-scratch keys (default 0, 1, ...), so the same (asset, day id) starts from the same
    weights in every call. Days run in order; warm starts chain through them.
    """
    assets, ends = np.asarray(assets, np.int32), np.asarray(ends, np.int32)
    if ends.ndim != 2 or ends.shape[0] != assets.shape[0] or ends.shape[1] < 1:
        raise ValueError(f"ends must be [assets={assets.shape[0]}, days >= 1], got {ends.shape}")
    day_ids = np.arange(ends.shape[1], dtype=np.int32) if day_ids is None else np.asarray(day_ids, np.int32)
    losses, oos = _refit_grid(family, learned_optimizer, grid_meta_params, jnp.asarray(assets), jnp.asarray(ends),
                              jnp.asarray(day_ids), int(budget), int(seed))
    return RefitRuns(np.asarray(losses), np.asarray(oos))


@jax.jit
def _mean_forecast_losses(family, assets, ends):
    def one(asset, end):
        return family.task(family.refit_config(asset, end)).mean_forecast_loss()

    return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(assets, ends)


def mean_forecast_losses(family: TaskFamily, assets: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Returns [assets, days] out-of-sample losses of the naive forecast (each refit window's mean target), the
    no-model reference a fitted forecaster has to beat; same `assets` and `ends` as refit_runs."""
    return np.asarray(_mean_forecast_losses(family, jnp.asarray(assets, jnp.int32), jnp.asarray(ends, jnp.int32)))


def block_bootstrap_ratio(numerator: np.ndarray, denominator: np.ndarray, *, block: int = 10,
                          resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Tuple[float, float, float]:
    """Returns sum(numerator) / sum(denominator) over [assets, days] arrays and its moving-block bootstrap interval.

    Days are resampled in blocks of `block` consecutive days (all assets of a day together), since
    neighbouring days' forecasts share returns; NaN entries (days without a choice) are left out.
    """
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    if numerator.shape != denominator.shape or numerator.ndim != 2:
        raise ValueError(f"need two [assets, days] arrays of one shape, got {numerator.shape}, {denominator.shape}")
    keep = np.isfinite(numerator) & np.isfinite(denominator)
    top, bottom = np.sum(np.where(keep, numerator, 0.0), axis=0), np.sum(np.where(keep, denominator, 0.0), axis=0)
    num_days = top.shape[0]
    block = max(1, min(int(block), num_days))
    starts = np.random.default_rng(seed).integers(0, num_days - block + 1, size=(resamples, -(-num_days // block)))
    days = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(resamples, -1)[:, :num_days]
    ratios = top[days].sum(axis=1) / bottom[days].sum(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [tail, 1.0 - tail])
    return float(top.sum() / bottom.sum()), float(low), float(high)
