"""Daily refits of one forecaster: each task refits the `finance` family's model on an asset's trailing window.

A desk that forecasts volatility (or returns) refits its model every day on the most recent
`train_days` examples and uses it to forecast the next day. A task here is one such refit:
an asset and a refit day d (an index into the asset's cleaned series, tasks/finance_data.py).
Examples, features and targets are exactly the `finance` family's (tasks/finance.py: lagged
returns in units of the trailing volatility; target the next `horizon` days' realised
volatility or the next day's return), with one fixed model: window length `window`, feature
set `feature_set`, activation `activation`, init scale `init_scale`.

- "train" is the whole trailing window, deterministically (a full batch): the `train_days`
  examples whose targets start at d - horizon + 1 - train_days .. d - horizon, so the last
  target day is d - 1 and every feature day is earlier still;
- "valid" and "test" are the out-of-sample forecasts: the `oos_days` examples whose targets
  start at d, d + 1, ... (the forecasts the refitted model issues before the next refit).

Nothing a refit on day d trains on reads a return from day d on (tests/test_daily_retraining.py
replaces the future and checks). `sample` draws the asset uniformly and d uniformly among the
asset's refit days whose date lies in [first_date, last_date] (ISO dates; empty: no bound), so a
meta-training family can be confined to an earlier period than the one it is judged on.
"""

from __future__ import annotations

import datetime
from typing import Dict, Optional, Sequence, Union

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tasks.base import Array, TaskError, TaskFamily, check_split
from tasks.finance import FEATURE_SETS, TARGETS, Batch, FinanceFamily, FinanceTask, Params
from tasks.finance_data import AssetSeries, parse_date
from tasks.mlp_image import ACTIVATIONS
from tasks.registry import register
from tasks.sampling import uniform_index

RefitConfig = Dict[str, Array]


class DailyRefitTask(FinanceTask):
    """One refit: the family's forecaster trained on the trailing window before day `cfg["end"]`."""

    name = "finance_daily"

    def __init__(self, refits: "DailyRefitFamily", cfg: RefitConfig):
        super().__init__(refits.forecast, cfg)
        self.refits = refits

    def sample_batch(self, key: Array, split: str) -> Batch:
        """Returns the whole trailing window ("train") or the out-of-sample forecasts ("valid", "test"); `key` is unused."""
        del key
        if check_split(split) == "train":
            positions = self.refits.train_positions(self.cfg["end"])
        else:
            positions = self.refits.oos_positions(self.cfg["end"])
        return self.family.examples(self.cfg, positions)

    def loss(self, params: Params, key: Array, batch: Batch) -> Array:
        """Returns the training objective: the weighted mean squared error plus `l2` / 2 times the squared weights."""
        penalty = sum(jnp.sum(jnp.square(layer["w"])) for layer in params.values())
        return super().loss(params, key, batch) + (0.5 * self.refits.l2 * penalty).astype(jnp.float32)

    def forecast_loss(self, params: Params) -> Array:
        """Returns the weighted mean squared error of the out-of-sample forecasts (no penalty)."""
        return super().loss(params, None, self.sample_batch(None, "valid"))

    def mean_forecast_loss(self) -> Array:
        """Returns the out-of-sample loss of the naive forecast: the trailing window's weighted mean target."""
        _, y, weight = self.sample_batch(None, "train")
        _, oos_y, oos_weight = self.sample_batch(None, "valid")
        mean = jnp.sum(weight * y) / jnp.maximum(jnp.sum(weight), 1.0)
        return jnp.sum(oos_weight * jnp.square(oos_y - mean)) / jnp.maximum(jnp.sum(oos_weight), 1.0)


@register("finance_daily")
class DailyRefitFamily(TaskFamily):
    """Daily refits of a fixed volatility or return forecaster; the asset and the refit day vary.

    cfg fields: those of `finance` (asset, window, feature_set, activation, init_scale) and
    `end`, the refit day (int32 index into the asset's series). `market` is a market name, a
    tuple of them or an AssetSeries, as for `finance`.
    """

    name = "finance_daily"
    data_fields = ("forecast", "end_range")

    def __init__(
        self,
        market: Union[str, Sequence[str], AssetSeries] = "synthetic",
        target: str = "volatility",
        assets: Optional[Sequence[str]] = None,
        horizon: int = 5,
        window: int = 10,
        feature_set: str = "returns_and_abs",
        scale_window: int = 60,
        hidden: Sequence[int] = (8,),
        activation: str = "relu",
        init_scale: float = 1.0,
        l2: float = 0.1,
        train_days: int = 500,
        oos_days: int = 1,
        first_date: str = "",
        last_date: str = "",
        drop_short_assets: bool = False,
        max_days: int = 2520,
        min_days: int = 500,
        data_dir: Optional[str] = None,
        seed: int = 0,
    ):
        if target not in TARGETS or feature_set not in FEATURE_SETS or activation not in ACTIVATIONS:
            raise TaskError(f"finance_daily needs target in {TARGETS}, feature_set in {tuple(FEATURE_SETS)} and "
                            f"activation in {tuple(ACTIVATIONS)}; got {target!r}, {feature_set!r}, {activation!r}")
        if min(int(train_days), int(oos_days), int(window)) < 1:
            raise TaskError(f"finance_daily needs positive train_days, oos_days and window; got "
                            f"{train_days}, {oos_days}, {window}")
        forecast_kwargs = dict(
            target=target, min_window=window, max_window=window, feature_sets=(feature_set,), horizon=horizon,
            scale_window=scale_window, hidden=hidden, batch_size=int(train_days), min_init_scale=init_scale,
            max_init_scale=init_scale, activations=(activation,),
        )
        self.forecast = FinanceFamily(market, assets=assets, max_days=max_days, min_days=min_days, data_dir=data_dir,
                                      seed=seed, **forecast_kwargs)
        self.train_days, self.oos_days = int(train_days), int(oos_days)
        if not float(l2) >= 0:
            raise TaskError(f"finance_daily needs l2 >= 0, got {l2}")
        self.window, self.init_scale, self.l2 = int(window), float(init_scale), float(l2)
        self.horizon = self.forecast.horizon
        self.dates = (_date(first_date, "first_date"), _date(last_date, "last_date"))
        series = self.forecast.series.value
        ranges = np.stack([self.refit_range(a, *self.dates) for a in range(len(series.names))])
        empty = [series.names[a] for a in np.nonzero(ranges[:, 1] < ranges[:, 0])[0]]
        if empty and drop_short_assets and len(empty) < len(series.names):
            kept = [name for name in series.names if name not in set(empty)]
            self.forecast = FinanceFamily(
                series._replace(**_rows(series, [series.names.index(name) for name in kept])), **forecast_kwargs)
            series = self.forecast.series.value
            ranges = np.stack([self.refit_range(a, *self.dates) for a in range(len(series.names))])
            empty = []
        if empty:
            raise TaskError(f"finance_daily: no refit day between {first_date or 'the start'} and "
                            f"{last_date or 'the end'} for {', '.join(empty[:5])} (needs {self.first_refit} days "
                            f"of history and {self.horizon + self.oos_days - 1} after)")
        self.end_range = jnp.asarray(ranges, jnp.int32)

    @property
    def asset_names(self):
        """The names of the assets, in the order of cfg["asset"]."""
        return self.forecast.asset_names

    @property
    def first_refit(self) -> int:
        """The earliest refit day index: enough history for the window's features and trailing scale."""
        return self.train_days + self.horizon - 1 + max(self.forecast.max_window, self.forecast.scale_window)

    def refit_range(self, asset: int, first_day: Optional[int] = None, last_day: Optional[int] = None) -> np.ndarray:
        """Returns [lowest, highest] refit day index of `asset` whose date lies in [first_day, last_day] (days
        since 1970-01-01; None: no bound); highest < lowest when there is none."""
        series = self.forecast.series.value
        dates = series.days[asset, : series.lengths[asset]]
        low, high = self.first_refit, int(series.lengths[asset]) - self.horizon - self.oos_days + 1
        if first_day is not None:
            low = max(low, int(np.searchsorted(dates, first_day, side="left")))
        if last_day is not None:
            high = min(high, int(np.searchsorted(dates, last_day, side="right")) - 1)
        return np.asarray([low, high], np.int64)

    def refit_ends(self, asset: int, calendar: np.ndarray) -> np.ndarray:
        """Returns, per calendar date (days since 1970-01-01), the refit day index of `asset` on that date: its first
        observation on or after the date (so training reads only earlier observations)."""
        series = self.forecast.series.value
        return np.searchsorted(series.days[asset, : series.lengths[asset]], np.asarray(calendar), side="left")

    def train_positions(self, end: Array) -> Array:
        """Returns the target start days [train_days] of the trailing window of a refit on day `end`."""
        return end - self.horizon + 1 - self.train_days + jnp.arange(self.train_days, dtype=jnp.int32)

    def oos_positions(self, end: Array) -> Array:
        """Returns the target start days [oos_days] of the out-of-sample forecasts of a refit on day `end`."""
        return end + jnp.arange(self.oos_days, dtype=jnp.int32)

    def refit_config(self, asset: Array, end: Array) -> RefitConfig:
        """Returns the configuration of the refit of `asset` on day index `end`."""
        return {
            "asset": jnp.asarray(asset, jnp.int32),
            "window": jnp.asarray(self.window, jnp.int32),
            "feature_set": jnp.zeros((), jnp.int32),
            "activation": jnp.zeros((), jnp.int32),
            "init_scale": jnp.asarray(self.init_scale, jnp.float32),
            "end": jnp.asarray(end, jnp.int32),
        }

    def sample(self, key: Array) -> RefitConfig:
        """Samples an asset uniformly, then a refit day uniformly within its allowed range."""
        asset_draw, day_draw = jax.random.uniform(key, (2,))
        asset = uniform_index(asset_draw, self.end_range.shape[0])
        low, high = self.end_range[asset, 0], self.end_range[asset, 1]
        end = low + jnp.minimum(jnp.floor(day_draw * (high - low + 1)).astype(jnp.int32), high - low)
        return self.refit_config(asset, end)

    def task(self, cfg: RefitConfig) -> DailyRefitTask:
        """Builds the refit described by `cfg` (works with traced cfg and family leaves)."""
        chex.assert_rank([cfg["asset"], cfg["end"]], 0)
        return DailyRefitTask(self, cfg)


def _rows(series: AssetSeries, rows: Sequence[int]) -> Dict[str, object]:
    """Returns the fields of `series` restricted to the assets at `rows` (still left-aligned)."""
    width = int(np.max(series.lengths[rows]))
    return {"names": tuple(series.names[r] for r in rows), "returns": series.returns[rows, :width],
            "valid": series.valid[rows, :width], "days": series.days[rows, :width], "lengths": series.lengths[rows]}


def _date(text: str, label: str) -> Optional[int]:
    if not text:
        return None
    try:
        return parse_date(text)
    except (ValueError, TypeError):
        raise TaskError(f"finance_daily: {label} must be an ISO date like 2016-12-31, got {text!r}") from None


def iso_date(day: int) -> str:
    """Returns the ISO date of `day` days since 1970-01-01."""
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=int(day))).isoformat()
