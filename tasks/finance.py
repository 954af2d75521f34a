"""Forecasting from daily returns: next-day return regression or volatility forecasting with an MLP.

Data: cleaned daily log returns of one or more markets (`sp500` stocks, `fx` rates,
`indices`, `all`, or the file-free `synthetic` GARCH series; cleaning rules in
tasks/finance_data.py), held on device as [assets, days] arrays with a validity mask.

Each task samples an asset, a window length W in [min_window, max_window], a feature set,
an activation and an init scale. An example predicts from day t (the target's first day):
- scale s_t: root mean square of the valid returns on days t - scale_window .. t - 1;
- features: the last W returns r_{t-1}, ..., r_{t-W} divided by s_t and clipped to
  [-10, 10], as signed values, absolute values or both (`feature_sets`), zero-padded to
  max_window each, so the input has a static size 2 * max_window;
- target `"return"`: r_t / s_t clipped to [-10, 10]; target `"volatility"`: the root mean
  square of r_t .. r_{t+horizon-1} divided by s_t, clipped to [0, 10]. Examples whose
  target days are invalid (gaps, jumps) get weight 0.
Features use only days before t; targets only days from t on.

Walk-forward split, per asset, over its usable days [warmup, length) with warmup =
max(max_window, scale_window): the first `train_fraction` of days are train, the next
`valid_fraction` valid, the rest test. An example belongs to a split when all of its target
days lie inside the split, so no train target reaches the first valid day and no valid
target reaches the first test day; features of later splits may read earlier days (the
past), never the reverse.

Loss: weighted mean squared error. Targets are in units of the trailing volatility, so
predicting 0 scores about 1; the normaliser is the identity.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tasks.base import Array, Task, TaskError, TaskFamily, check_split
from tasks.finance_data import AssetSeries, load_market
from tasks.mlp_image import ACTIVATIONS, apply_activation
from tasks.registry import register
from tasks.sampling import check_range, init_mlp, log_uniform, uniform_index

Params = Dict[str, Dict[str, Array]]
Batch = Tuple[Array, Array, Array]
FinanceConfig = Dict[str, Array]
TARGETS = ("volatility", "return")
FEATURE_SETS = {"returns": (1.0, 0.0), "abs_returns": (0.0, 1.0), "returns_and_abs": (1.0, 1.0)}
_SPLIT_INDEX = {"train": 0, "valid": 1, "test": 2}
_CLIP = 10.0
ASSET_CLASSES = ("stock", "currency", "index", "commodity", "synthetic")
# A task's domain vector (FinanceTask.domain_features): its asset class one-hot, then its volatility.
DOMAIN_FEATURES = tuple(f"asset_class_{c}" for c in ASSET_CLASSES) + ("log_volatility",)
_INDEX_NAMES = ("sp500", "nasdaq")
_COMMODITY_NAMES = ("wti",)


def asset_class(name: str) -> str:
    """Returns the asset class of a series named as tasks.finance_data names them: `fx:...` currencies,
    `synthetic_..` synthetic, the `indices` market's sp500 and nasdaq indices and wti oil (a commodity);
    any other name (S&P 500 tickers, custom series) is a stock."""
    if name.startswith("fx:"):
        return "currency"
    if name.startswith("synthetic_"):
        return "synthetic"
    if name in _INDEX_NAMES:
        return "index"
    if name in _COMMODITY_NAMES:
        return "commodity"
    return "stock"


def log_volatility_feature(daily_volatility: np.ndarray) -> np.ndarray:
    """Returns log10(volatility) + 2 clipped to [-3, 3]: 0 at 1% a day, -1 at 0.1%, +1 at 10%."""
    return np.clip(np.log10(np.maximum(daily_volatility, 1e-12)) + 2.0, -3.0, 3.0)


class FinanceTask(Task):
    """One forecasting problem on one asset: an MLP from lagged-return features to the target."""

    name = "finance"

    def __init__(self, family: "FinanceFamily", cfg: FinanceConfig):
        self.family = family
        self.cfg = cfg

    def init(self, key: Array) -> Params:
        """Returns fan-in-scaled normal weights times the task's init scale, and zero biases."""
        return init_mlp(key, self.family.layer_sizes, self.cfg["init_scale"])

    def sample_batch(self, key: Array, split: str) -> Batch:
        """Draws (x float32 [batch, 2 * max_window], y float32 [batch], weight float32 [batch]) from `split`."""
        low, high = self.family.split_range(self.cfg["asset"], check_split(split))
        draws = jax.random.uniform(key, (self.family.batch_size,))
        positions = low + jnp.floor(draws * (high - low)).astype(jnp.int32)
        return self.family.examples(self.cfg, jnp.minimum(positions, high - 1))

    def apply(self, params: Params, x: Array) -> Array:
        """Returns predictions [batch] for features `x` [batch, 2 * max_window]."""
        hidden, num_layers = x, len(self.family.layer_sizes) - 1
        for i in range(num_layers):
            hidden = hidden @ params[f"layer_{i}"]["w"] + params[f"layer_{i}"]["b"]
            if i < num_layers - 1:
                hidden = apply_activation(self.cfg["activation"], hidden, self.family.activations)
        return hidden[:, 0]

    def loss(self, params: Params, key: Array, batch: Batch) -> Array:
        """Returns the weighted mean squared error of the predictions (float32)."""
        x, y, weight = batch
        chex.assert_equal_shape([y, weight])
        error = jnp.square(self.apply(params, x) - y)
        return (jnp.sum(weight * error) / jnp.maximum(jnp.sum(weight), 1.0)).astype(jnp.float32)

    def domain_features(self) -> Array:
        """Returns the DOMAIN_FEATURES of the task's asset: its asset class one-hot and log_volatility_feature of
        the root mean square of its valid daily returns over its train split (float32 [6])."""
        asset = self.cfg["asset"]
        classes = jnp.asarray(self.family.asset_class_ids, jnp.int32)[asset]
        volatility = jnp.asarray(self.family.asset_volatility_features, jnp.float32)[asset]
        return jnp.concatenate([jax.nn.one_hot(classes, len(ASSET_CLASSES), dtype=jnp.float32), volatility[None]])


@register("finance")
class FinanceFamily(TaskFamily):
    """Return or volatility forecasting on real (or synthetic) daily returns; asset, window and features vary.

    cfg fields: `asset`, `window`, `feature_set`, `activation` (int32), `init_scale` (float32).
    `market` is a market name, a tuple of them, or an AssetSeries (tasks/finance_data.py).
    """

    name = "finance"
    data_fields = ("returns", "valid", "bounds")

    def __init__(
        self,
        market: Union[str, Sequence[str], AssetSeries] = "synthetic",
        target: str = "volatility",
        assets: Optional[Sequence[str]] = None,
        min_window: int = 5,
        max_window: int = 20,
        feature_sets: Sequence[str] = tuple(FEATURE_SETS),
        horizon: int = 5,
        scale_window: int = 60,
        hidden: Sequence[int] = (32,),
        batch_size: int = 64,
        train_fraction: float = 0.7,
        valid_fraction: float = 0.15,
        max_days: int = 2520,
        min_days: int = 500,
        max_gap_days: int = 7,
        data_dir: Optional[str] = None,
        min_init_scale: float = 0.5,
        max_init_scale: float = 2.0,
        activations: Sequence[str] = tuple(ACTIVATIONS),
        seed: int = 0,
    ):
        if target not in TARGETS:
            raise TaskError(f"finance target must be one of {', '.join(TARGETS)}, got {target!r}")
        if not 1 <= int(min_window) <= int(max_window) or min(int(horizon), int(scale_window), int(batch_size)) < 1:
            raise TaskError("finance needs 1 <= min_window <= max_window, and positive horizon, scale_window and "
                            "batch_size")
        if not feature_sets or any(f not in FEATURE_SETS for f in feature_sets):
            raise TaskError(f"finance feature_sets must be a non-empty subset of {', '.join(FEATURE_SETS)}")
        if not activations or any(a not in ACTIVATIONS for a in activations):
            raise TaskError(f"finance activations must be a non-empty subset of {', '.join(ACTIVATIONS)}")
        if not (0 < train_fraction and 0 < valid_fraction and train_fraction + valid_fraction < 1):
            raise TaskError(
                f"finance needs positive train/valid fractions summing below 1, got {train_fraction}, {valid_fraction}"
            )
        self.target = target
        self.window_range = (int(min_window), int(max_window))
        self.max_window = int(max_window)
        self.feature_sets = tuple(feature_sets)
        self.horizon = int(horizon) if target == "volatility" else 1
        self.scale_window = int(scale_window)
        self.batch_size = int(batch_size)
        self.data_dir = data_dir
        self.init_scale_range = check_range("finance", "init_scale", min_init_scale, max_init_scale)
        self.activations = tuple(activations)
        self.layer_sizes = (2 * self.max_window,) + tuple(int(h) for h in hidden) + (1,)
        if isinstance(market, AssetSeries):
            series, self.market = market, ("custom",)
        else:
            self.market = (market,) if isinstance(market, str) else tuple(market)
            series = load_market(
                self.market, data_dir, assets, int(max_days), int(min_days), int(max_gap_days), int(seed)
            )
        warmup = max(self.max_window, self.scale_window)
        usable = series.lengths.astype(np.int64) - warmup
        train_end = warmup + np.floor(usable * train_fraction).astype(np.int64)
        valid_end = train_end + np.floor(usable * valid_fraction).astype(np.int64)
        bounds = np.stack([np.full_like(train_end, warmup), train_end, valid_end, series.lengths], axis=1)
        if np.any(np.diff(bounds, axis=1) < self.horizon):
            raise TaskError(f"finance: an asset has too few days for its splits; raise min_days (now {min_days})")
        self.series = _HostSeries(series)
        self.asset_class_ids = tuple(ASSET_CLASSES.index(asset_class(name)) for name in series.names)
        self.asset_volatility_features = tuple(float(v) for v in log_volatility_feature(
            _train_volatility(series, bounds[:, 0], bounds[:, 1])))
        self.returns = jnp.asarray(series.returns)
        self.valid = jnp.asarray(series.valid, jnp.float32)
        self.bounds = jnp.asarray(bounds, jnp.int32)

    @property
    def asset_names(self) -> Tuple[str, ...]:
        """The names of the assets, in the order of cfg["asset"]."""
        return self.series.value.names

    def split_range(self, asset: Array, split: str) -> Tuple[Array, Array]:
        """Returns [low, high) of the target start days t of `split` for `asset` (all target days inside the split)."""
        index = _SPLIT_INDEX[check_split(split)]
        bounds = self.bounds[asset]
        return bounds[index], bounds[index + 1] - self.horizon + 1

    def examples(self, cfg: FinanceConfig, positions: Array) -> Batch:
        """Returns (features, target, weight) of the examples whose target starts at day index `positions`."""
        chex.assert_rank(positions, 1)
        returns, valid = self.returns[cfg["asset"]], self.valid[cfg["asset"]]
        past = positions[:, None] - 1 - jnp.arange(max(self.max_window, self.scale_window))[None, :]
        past_r, past_v = returns[jnp.maximum(past, 0)], valid[jnp.maximum(past, 0)] * (past >= 0)
        scale_v = past_v[:, : self.scale_window]
        scale = jnp.sqrt(jnp.sum(scale_v * jnp.square(past_r[:, : self.scale_window]), axis=1)
                         / jnp.maximum(jnp.sum(scale_v, axis=1), 1.0))
        scale = jnp.maximum(scale, 1e-4)[:, None]
        in_window = (jnp.arange(self.max_window) < cfg["window"])[None, :] * past_v[:, : self.max_window]
        lags = jnp.clip(past_r[:, : self.max_window] / scale, -_CLIP, _CLIP) * in_window
        use = jnp.asarray([FEATURE_SETS[name] for name in self.feature_sets], jnp.float32)[cfg["feature_set"]]
        features = jnp.concatenate([lags * use[0], jnp.abs(lags) * use[1]], axis=1)
        future = positions[:, None] + jnp.arange(self.horizon)[None, :]
        future_r, future_v = returns[future], valid[future]
        if self.target == "return":
            target = jnp.clip(future_r[:, 0] / scale[:, 0], -_CLIP, _CLIP)
            weight = future_v[:, 0]
        else:
            count = jnp.sum(future_v, axis=1)
            realised = jnp.sqrt(jnp.sum(future_v * jnp.square(future_r), axis=1) / jnp.maximum(count, 1.0))
            target = jnp.clip(realised / scale[:, 0], 0.0, _CLIP)
            weight = (count >= 0.5 * self.horizon).astype(jnp.float32)
        return features.astype(jnp.float32), target.astype(jnp.float32), weight.astype(jnp.float32)

    def sample(self, key: Array) -> FinanceConfig:
        """Samples an asset, a window length, a feature set, an activation and a log-uniform init scale."""
        asset_draw, window_draw, feature_draw, activation_draw, scale_draw = jax.random.uniform(key, (5,))
        low, high = self.window_range
        return {
            "asset": uniform_index(asset_draw, self.returns.shape[0]),
            "window": uniform_index(window_draw, high - low + 1, low),
            "feature_set": uniform_index(feature_draw, len(self.feature_sets)),
            "activation": uniform_index(activation_draw, len(self.activations)),
            "init_scale": log_uniform(scale_draw, self.init_scale_range),
        }

    def task(self, cfg: FinanceConfig) -> FinanceTask:
        """Builds the task described by `cfg` (works with traced cfg and family leaves)."""
        chex.assert_rank([cfg["asset"], cfg["window"], cfg["feature_set"], cfg["init_scale"]], 0)
        return FinanceTask(self, cfg)


def _train_volatility(series: AssetSeries, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Returns each asset's root mean square of valid daily returns on days [start, end) (0 with none)."""
    days = np.arange(series.returns.shape[1])[None, :]
    inside = series.valid & (days >= starts[:, None]) & (days < ends[:, None])
    squares = np.where(inside, np.square(series.returns.astype(np.float64)), 0.0)
    return np.sqrt(squares.sum(axis=1) / np.maximum(inside.sum(axis=1), 1))


class _HostSeries:
    """Host-side (numpy) cleaned series, kept as static metadata: names and dates for inspection and tests.

    Compared by value, so a family rebuilt from the same data has equal static fields and reuses
    compiled programs.
    """

    def __init__(self, value: AssetSeries):
        self.value = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _HostSeries):
            return False
        mine, theirs = self.value, other.value
        return mine is theirs or (mine.names == theirs.names and all(
            np.array_equal(a, b, equal_nan=True) for a, b in zip(mine[1:], theirs[1:])
        ))

    def __hash__(self) -> int:
        return hash((self.value.names, self.value.returns.shape))

    def __repr__(self) -> str:
        return f"AssetSeries({len(self.value.names)} assets)"
