"""Daily refits (tasks/finance_daily.py) and their walk-forward evaluation (meta_train/evaluation/walk_forward.py):
nothing a day's refit or a period's tuning uses may depend on the future. No data folder needed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

import lopt
import tasks
from meta_train.evaluation import walk_forward as wf
from meta_train.evaluation.curves import learning_rate_grid
from tasks import finance_data

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(window=5, hidden=(4,), scale_window=20, train_days=60, horizon=1, min_days=100, l2=0.1)


def iid_series(num_days: int = 300, seed: int = 0) -> finance_data.AssetSeries:
    """Two assets of i.i.d. returns at a constant 1% volatility: their future is unpredictable from their past."""
    rng = np.random.default_rng(seed)
    days = np.arange(num_days) * 7 // 5 + finance_data.parse_date("2010-01-04")
    raw = {f"iid_{a}": (days, 100 * np.exp(np.cumsum(0.01 * rng.standard_normal(num_days)))) for a in range(2)}
    return finance_data.build_series(raw, min_days=100)


def with_future(series: finance_data.AssetSeries, cut: int) -> finance_data.AssetSeries:
    """The same series up to index `cut`; from `cut` on, returns alternate between 5% and 0.2% in size, a pattern
    only a forecaster that peeks past `cut` could know."""
    returns = series.returns.copy()
    pattern = np.where(np.arange(returns.shape[1] - cut) % 2 == 0, 0.05, 0.002).astype(np.float32)
    returns[:, cut:] = pattern[None, :]
    return series._replace(returns=returns)


@jax.jit
def batches(family, asset, end):
    task = family.task(family.refit_config(asset, end))
    return task.sample_batch(None, "train"), task.sample_batch(None, "valid")


def test_refit_windows_end_before_the_refit_day_and_forecasts_start_on_it():
    family = tasks.get("finance_daily", market=iid_series(), **SMALL)
    end = family.first_refit + 7
    train, oos = np.asarray(family.train_positions(end)), np.asarray(family.oos_positions(end))
    assert train[-1] + family.horizon - 1 == end - 1 and len(train) == family.train_days
    assert train[0] - family.window >= 0 and train[0] - family.forecast.scale_window >= 0
    assert oos[0] == end and len(oos) == family.oos_days


def test_a_refit_trains_on_nothing_from_its_day_on_and_forecasts_from_it():
    series = iid_series()
    family = tasks.get("finance_daily", market=series, **SMALL)
    for end in (family.first_refit, family.first_refit + 50):
        future = tasks.get("finance_daily", market=with_future(series, end), **SMALL)
        (x, y, w), (x_oos, y_oos, _) = batches(family, 0, end)
        (fx, fy, fw), (fx_oos, fy_oos, _) = batches(future, 0, end)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(fx))
        np.testing.assert_array_equal(np.asarray(y), np.asarray(fy))
        np.testing.assert_array_equal(np.asarray(w), np.asarray(fw))
        np.testing.assert_array_equal(np.asarray(x_oos), np.asarray(fx_oos))  # the forecast's inputs are past days
        assert not np.allclose(np.asarray(y_oos), np.asarray(fy_oos))  # its target is the future


def test_a_future_predictable_only_by_peeking_is_not_predicted():
    """Refits before the cut are bit-identical whatever follows it, warm-start chain included; so the day of the cut
    is forecast as badly as a forecaster blind to the pattern must, where a peeking one would score near 0."""
    series = iid_series()
    honest = tasks.get("finance_daily", market=series, **SMALL)
    calendar = series.days[0, honest.first_refit: honest.first_refit + 8]
    cut_day = 5
    ends = np.stack([honest.refit_ends(a, calendar) for a in range(2)])
    peeked = tasks.get("finance_daily", market=with_future(series, int(ends[0, cut_day])), **SMALL)
    adam = lopt.get("adam")
    grid = learning_rate_grid(adam, [0.03])
    runs = [wf.refit_runs(family, adam, grid, np.arange(2), ends, budget=15) for family in (honest, peeked)]
    np.testing.assert_array_equal(runs[0].train_losses[:, :, : cut_day + 1], runs[1].train_losses[:, :, : cut_day + 1])
    np.testing.assert_array_equal(runs[0].oos_losses[:, :, :cut_day], runs[1].oos_losses[:, :, :cut_day])
    _, (_, pattern_target, _) = batches(peeked, 0, int(ends[0, cut_day]))
    assert float(pattern_target[0]) > 4.0  # a 5% day after months of 1% days
    assert np.all(runs[1].oos_losses[:, :, cut_day, :, -1] > 4.0), runs[1].oos_losses[:, :, cut_day, :, -1]
    assert np.all(np.isfinite(runs[0].train_losses))
    scratch, warm = runs[0].train_losses[..., 0, :], runs[0].train_losses[..., 1, :]
    assert np.all(scratch[..., -1] < scratch[..., 0])  # every refit from scratch fits
    np.testing.assert_array_equal(warm[:, :, 0], scratch[:, :, 0])  # the first day has no yesterday
    assert np.all(warm[:, :, 1:, 0] < scratch[:, :, 1:, 0])  # later days start from yesterday's fitted model


def test_tuning_picks_on_the_previous_period_only():
    rng = np.random.default_rng(0)
    periods = np.repeat(np.arange(6), 10)
    scores = rng.uniform(0.5, 2.0, size=(4, 3, periods.size))
    choice = wf.choose_on_previous_period(scores, periods)
    assert np.all(choice[periods == 0] == -1)
    for k in range(1, 6):
        expected = np.argmin(np.log(scores[:, :, periods == k - 1]).mean(axis=2), axis=0)
        assert np.all(choice[periods == k] == expected[None, :])
        future = scores.copy()
        future[:, :, periods >= k] = rng.uniform(0.5, 2.0, size=future[:, :, periods >= k].shape)
        np.testing.assert_array_equal(wf.choose_on_previous_period(future, periods)[periods <= k], choice[periods <= k])
    shared = wf.choose_on_previous_period(scores, periods, per_asset=False)
    assert np.all(shared == shared[:, :1])


def test_a_best_rate_that_changes_unpredictably_is_found_only_at_chance_rate():
    """Each period's best grid point is a fresh random draw: tuning on the period itself (look-ahead) would always
    find it; tuning on the previous period finds it about 1 time in 8."""
    rng = np.random.default_rng(1)
    grid, num_periods, per = 8, 60, 5
    best = rng.integers(0, grid, num_periods)
    periods = np.repeat(np.arange(num_periods), per)
    scores = np.ones((grid, 1, periods.size))
    scores[best[periods], 0, np.arange(periods.size)] = 0.5
    choice = wf.choose_on_previous_period(scores, periods)[:, 0]
    hits = np.mean(choice[periods > 0] == best[periods[periods > 0]])
    assert hits < 0.35, hits
    picked = wf.take_choice(scores, choice[:, None])
    assert np.all(np.isnan(picked[0, periods == 0])) and np.nanmean(picked) > 0.8


def test_block_bootstrap_ratio():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 1.5, size=(3, 40))
    ratio, low, high = wf.block_bootstrap_ratio(1.1 * base, base)
    assert ratio == pytest.approx(1.1) and low == pytest.approx(1.1) and high == pytest.approx(1.1)
    noisy = base * rng.uniform(0.5, 1.7, size=base.shape)
    noisy[0, :5] = np.nan
    ratio, low, high = wf.block_bootstrap_ratio(noisy, base, block=5)
    assert low < ratio < high and np.isfinite([ratio, low, high]).all()


def test_month_periods():
    days = [finance_data.parse_date(d) for d in ("2016-12-30", "2017-01-03", "2017-01-31", "2017-02-01")]
    periods = wf.month_periods(np.asarray(days))
    assert periods[1] == periods[2] == periods[0] + 1 == periods[3] - 1


def test_family_errors_are_one_line():
    with pytest.raises(tasks.TaskError, match="ISO date"):
        tasks.get("finance_daily", market=iid_series(), last_date="31/12/2016", **SMALL)
    with pytest.raises(tasks.TaskError, match="no refit day"):
        tasks.get("finance_daily", market=iid_series(), last_date="2010-02-01", **SMALL)
    with pytest.raises(tasks.TaskError, match="l2"):
        tasks.get("finance_daily", market=iid_series(), **{**SMALL, "l2": -1.0})


@pytest.mark.parametrize("extra, message", [([], "no price data"),
                                            (["--config", "configs/finance_daly.py"], "no config file")])
def test_benchmark_without_its_inputs_says_so_in_one_line(tmp_path, capsys, extra, message):
    spec = importlib.util.spec_from_file_location("bench_daily_retraining", REPO / "scripts" / "bench_daily_retraining.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    status = bench.main(["--data-dir", str(tmp_path / "missing"), "--workdir", str(tmp_path / "work"),
                         "--out", str(tmp_path / "out.json"), *extra])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "work").exists()


@pytest.mark.parametrize("config_file", ["finance_daily.py", "finance_daily_adam_multiplier.py"])
def test_config_builds_a_daily_refit_run(config_file):
    from meta_train import build as build_lib
    from meta_train import config as config_lib

    config = config_lib.load_config(REPO / "configs" / config_file)
    config.task.kwargs.market = "synthetic"
    run = build_lib.build(config)
    assert run.family.name == "finance_daily" and run.family.horizon == 5
    assert run.learned_optimizer.name == config.optimizer.name
    assert run.trainer.horizon.min_length == config.eval.num_steps == 100
