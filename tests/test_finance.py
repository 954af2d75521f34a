"""The finance family and its data: cleaning rules, walk-forward splits, and no look-ahead."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks
from tasks import finance_data
from tasks.finance import FinanceFamily

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SMALL = dict(min_window=3, max_window=10, scale_window=20, hidden=(8,), activations=("relu",), batch_size=16,
             min_days=200)


def synthetic_raw(num_assets: int = 3, num_days: int = 600):
    return finance_data.synthetic_prices(num_assets=num_assets, num_days=num_days, seed=3)


@jax.jit
def examples(family: FinanceFamily, cfg, positions):
    return family.examples(cfg, positions)


def all_examples(family: FinanceFamily, asset: int, window: int = 0, feature_set: str = "returns_and_abs"):
    """(x, y, weight) for every target start day of every split of `asset`, and those days' indices."""
    low = int(family.bounds[asset, 0])
    high = int(family.bounds[asset, 3]) - family.horizon + 1
    positions = jnp.arange(low, high, dtype=jnp.int32)
    cfg = {"asset": jnp.int32(asset), "window": jnp.int32(window or family.max_window),
           "feature_set": jnp.int32(family.feature_sets.index(feature_set))}
    return positions, examples(family, cfg, positions)


def test_dates_and_cleaning_rules():
    assert finance_data.parse_date("1/4/1999") == finance_data.parse_date("1999-01-04") == 10595
    days = np.array([0, 1, 2, 3, 3, 14, 15, 16, 17, 18])
    prices = np.array([10.0, 11.0, np.nan, 12.0, 12.5, 13.0, 6.5, -1.0, 6.6, 6.7])
    kept_days, returns, valid = finance_data.log_returns(days, prices)
    np.testing.assert_array_equal(kept_days, [0, 1, 3, 14, 15, 17, 18])
    np.testing.assert_array_equal(valid, [False, True, True, False, False, True, True])
    np.testing.assert_allclose(returns[2], np.log(12.5 / 11.0), rtol=1e-6)
    assert returns[3] == returns[4] == 0.0


def test_build_series_filters_and_left_aligns():
    rng = np.random.default_rng(0)
    walk = lambda n: 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))  # noqa: E731
    raw = {
        "long": (np.arange(400), walk(400)),
        "short": (np.arange(250), walk(250)),
        "too_short": (np.arange(50), walk(50)),
        "pegged": (np.arange(400), np.where(np.arange(400) % 10 == 0, 1.01, 1.0)),
    }
    series = finance_data.build_series(raw, max_days=300, min_days=100)
    assert series.names == ("long", "short") and series.returns.shape == (2, 300)
    np.testing.assert_array_equal(series.lengths, [300, 250])
    assert series.days[0, 0] == 100 and series.days[1, 249] == 249 and series.days[1, 250] == -1
    assert not series.valid[1, 250:].any() and series.valid[0].all()
    with pytest.raises(tasks.TaskError):
        finance_data.build_series({"pegged": raw["pegged"]}, min_days=100)


@pytest.mark.parametrize("target", ["volatility", "return"])
def test_no_look_ahead_when_prices_after_a_day_change(target):
    raw = synthetic_raw()
    family = FinanceFamily(finance_data.build_series(raw, min_days=200), target=target, **SMALL)
    cutoff = 350
    rng = np.random.default_rng(1)
    perturbed = {}
    for name, (days, prices) in raw.items():
        noise = np.where(np.arange(len(prices)) > cutoff, np.exp(rng.normal(0, 0.05, len(prices))), 1.0)
        perturbed[name] = (days, prices * noise)
    changed = FinanceFamily(finance_data.build_series(perturbed, min_days=200), target=target, **SMALL)
    for asset in range(3):
        positions, (x, y, w) = all_examples(family, asset)
        _, (x2, y2, w2) = all_examples(changed, asset)
        positions = np.asarray(positions)
        features_known = positions <= cutoff + 1
        targets_known = positions + family.horizon - 1 <= cutoff
        np.testing.assert_array_equal(np.asarray(x)[features_known], np.asarray(x2)[features_known])
        np.testing.assert_array_equal(np.asarray(y)[targets_known], np.asarray(y2)[targets_known])
        np.testing.assert_array_equal(np.asarray(w)[targets_known], np.asarray(w2)[targets_known])
        assert not np.array_equal(np.asarray(x)[~features_known], np.asarray(x2)[~features_known])


def test_features_and_targets_match_their_definition():
    family = FinanceFamily("synthetic", target="return", **SMALL)
    positions, (x, y, _) = all_examples(family, 0)
    returns = np.asarray(family.returns[0], np.float64)
    t = int(positions[40])
    scale = np.sqrt(np.mean(returns[t - family.scale_window: t] ** 2))
    lags = returns[t - 1: t - 1 - family.max_window: -1] / scale
    np.testing.assert_allclose(np.asarray(x)[40], np.concatenate([lags, np.abs(lags)]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y)[40], returns[t] / scale, rtol=1e-4)
    short = np.asarray(all_examples(family, 0, window=3, feature_set="returns")[1][0])[40]
    np.testing.assert_allclose(short[:3], lags[:3], rtol=1e-4)
    assert np.all(short[3:] == 0.0)


def test_walk_forward_splits_keep_targets_inside_their_split():
    family = FinanceFamily("synthetic", target="volatility", horizon=5, **SMALL)
    days = family.series.value.days
    for asset in range(family.returns.shape[0]):
        train, valid, test = (tuple(int(v) for v in family.split_range(asset, s)) for s in tasks.SPLITS)
        bounds = np.asarray(family.bounds[asset])
        first_valid_day, first_test_day = days[asset, bounds[1]], days[asset, bounds[2]]
        assert days[asset, train[1] - 1 + family.horizon - 1] < first_valid_day
        assert days[asset, valid[0]] >= first_valid_day
        assert days[asset, valid[1] - 1 + family.horizon - 1] < first_test_day <= days[asset, test[0]]
        assert test[1] - 1 + family.horizon - 1 < family.series.value.lengths[asset]
    task = family.task(family.sample(jax.random.key(0)))
    low, high = (int(v) for v in family.split_range(task.cfg["asset"], "train"))
    object.__setattr__(family, "examples", lambda cfg, positions: positions)
    drawn = np.concatenate([np.asarray(task.sample_batch(jax.random.key(k), "train")) for k in range(20)])
    assert drawn.min() >= low and drawn.max() < high and len(np.unique(drawn)) > 50


def test_sampled_configs_cover_assets_windows_and_feature_sets():
    family = FinanceFamily("synthetic", **SMALL)
    cfgs = jax.vmap(family.sample)(jax.random.split(jax.random.key(0), 200))
    assert set(np.asarray(cfgs["asset"]).tolist()) == set(range(16))
    assert set(np.asarray(cfgs["window"]).tolist()) == set(range(3, 11))
    assert set(np.asarray(cfgs["feature_set"]).tolist()) == {0, 1, 2}
    assert family.returns.dtype == jnp.float32 and family.asset_names[0] == "synthetic_00"


def test_missing_finance_files_are_a_one_line_error(tmp_path):
    (tmp_path / "finance").mkdir()
    began = time.perf_counter()
    with pytest.raises(tasks.TaskError) as error:
        tasks.get("finance", market="sp500", data_dir=str(tmp_path))
    message = str(error.value)
    assert time.perf_counter() - began < 2.0 and "\n" not in message
    assert str(tmp_path / "finance" / "sp500_all_stocks_5yr.csv.gz") in message
    with pytest.raises(tasks.TaskError):
        tasks.get("finance", market="crypto")


def test_real_markets_load_clean():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no shared data folder at {SHARED_DATA}")
    stocks = finance_data.load_market(("sp500",), str(SHARED_DATA))
    assert 480 <= len(stocks.names) <= 505 and stocks.returns.shape[1] == 1259
    assert np.abs(stocks.returns).max() <= finance_data.JUMP_LIMIT
    raw = finance_data._read_market("sp500", str(SHARED_DATA / "finance"))
    jumpy = [n for n, (_, p) in raw.items() if np.any(np.abs(np.diff(np.log(p[np.isfinite(p) & (p > 0)]))) > 0.4)]
    assert len(jumpy) == 13
    other = finance_data.load_market(("fx", "indices"), str(SHARED_DATA))
    assert {"fx:Euro", "fx:Japan", "sp500", "nasdaq", "wti"} <= set(other.names) and "fx:Venezuela" not in other.names
    family = FinanceFamily("sp500", assets=("AAPL", "MSFT"), data_dir=str(SHARED_DATA), **SMALL)
    assert family.asset_names == ("AAPL", "MSFT")
    x, y, w = family.task(family.sample(jax.random.key(0))).sample_batch(jax.random.key(1), "test")
    assert x.shape == (16, 20) and np.all(np.isfinite(y)) and float(w.sum()) > 0
