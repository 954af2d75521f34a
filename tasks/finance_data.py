"""Daily price series for the finance family: reading the CSV files, cleaning, and log returns.

Markets (files in `<data_dir>/finance/`, read with the standard library; no pandas):
- `sp500`: `sp500_all_stocks_5yr.csv.gz`, 505 S&P 500 stocks 2013-2018, close prices
  (columns date,open,high,low,close,volume,Name);
- `fx`: `fred_h10_fx_daily_1971_2017.csv.gz`, 34 FRED H.10 exchange rates per USD, one column
  each; empty cells are missing days;
- `indices`: `arch_sp500_daily_1999_2018.csv.gz` and `arch_nasdaq_daily_1999_2018.csv.gz`
  (Close; dates M/D/YYYY) and `arch_wti_daily_1986_2019.csv.gz` (WTI oil, DCOILWTICO);
- `all`: the three above; `synthetic`: GARCH(1,1) series with Student-t(5) shocks simulated
  from a fixed seed (no files; for tests and quick experiments).

Cleaning rules, per asset in date order:
1. Rows with a missing, non-numeric or non-positive price are dropped; of rows with the same
   date the last one is kept.
2. The return of an observation is log(p / p_previous) over consecutive kept rows. It is
   marked invalid (value 0, mask False) when (a) more than `max_gap_days` calendar days
   (default 7: longer than any weekend plus holiday) separate the two rows, a gap in the
   data; or (b) |log return| > 0.4, a stock split, reverse split, spin-off or bad tick (13
   S&P 500 tickers have such jumps; so do currency redenominations). The first observation
   has no return and is invalid.
3. Assets with fewer than `min_days` valid returns, or with more than 20% of their valid
   returns exactly zero (pegged currencies, stale quotes), are dropped.
4. Each asset keeps its most recent `max_days` observations, left-aligned in an
   [assets, max_days] array with a validity mask (padding is invalid, date -1).
"""

from __future__ import annotations

import csv
import datetime
import functools
import gzip
import io
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from tasks.base import TaskError
from tasks.datasets import resolve_data_dir

MARKETS = ("sp500", "fx", "indices", "all", "synthetic")
JUMP_LIMIT = 0.4
MAX_ZERO_FRACTION = 0.2
_FILES = {
    "sp500": "sp500_all_stocks_5yr.csv.gz",
    "fx": "fred_h10_fx_daily_1971_2017.csv.gz",
    "indices": ("arch_sp500_daily_1999_2018.csv.gz", "arch_nasdaq_daily_1999_2018.csv.gz",
                "arch_wti_daily_1986_2019.csv.gz"),
}
_EPOCH = datetime.date(1970, 1, 1)
RawSeries = Dict[str, Tuple[np.ndarray, np.ndarray]]


class AssetSeries(NamedTuple):
    """Cleaned daily log returns of several assets, left-aligned: row a holds asset a's last `lengths[a]` days."""

    names: Tuple[str, ...]
    returns: np.ndarray
    valid: np.ndarray
    days: np.ndarray
    lengths: np.ndarray


def parse_date(text: str) -> int:
    """Returns the days since 1970-01-01 of an ISO `YYYY-MM-DD` or US `M/D/YYYY` date."""
    if "/" in text:
        month, day, year = (int(p) for p in text.split("/"))
        return (datetime.date(year, month, day) - _EPOCH).days
    return (datetime.date.fromisoformat(text.strip()) - _EPOCH).days


def log_returns(
    days: np.ndarray, prices: np.ndarray, max_gap_days: int = 7
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Applies cleaning rules 1-2 to one asset: returns (days, log returns, validity) of its kept rows."""
    days, prices = np.asarray(days, np.int64), np.asarray(prices, np.float64)
    keep = np.isfinite(prices) & (prices > 0)
    days, prices = days[keep], prices[keep]
    order = np.argsort(days, kind="stable")
    days, prices = days[order], prices[order]
    last_of_day = np.append(days[1:] != days[:-1], True)[: len(days)]
    days, prices = days[last_of_day], prices[last_of_day]
    returns = np.zeros(len(prices), np.float64)
    valid = np.zeros(len(prices), bool)
    if len(prices) > 1:
        returns[1:] = np.log(prices[1:] / prices[:-1])
        valid[1:] = (np.diff(days) <= max_gap_days) & (np.abs(returns[1:]) <= JUMP_LIMIT)
    return days, np.where(valid, returns, 0.0).astype(np.float32), valid


def build_series(
    raw: RawSeries, max_days: int = 2520, min_days: int = 500, max_gap_days: int = 7
) -> AssetSeries:
    """Cleans raw {name: (days, prices)} series (rules 1-4) into one left-aligned AssetSeries."""
    kept: List[Tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    for name, (days, prices) in raw.items():
        days, returns, valid = log_returns(days, prices, max_gap_days)
        days, returns, valid = days[-max_days:], returns[-max_days:], valid[-max_days:]
        count = int(valid.sum())
        if count >= min_days and np.sum(valid & (returns == 0)) <= MAX_ZERO_FRACTION * count:
            kept.append((name, days, returns, valid))
    if not kept:
        raise TaskError(f"finance: no asset has {min_days} clean daily returns (min_days={min_days})")
    width = max(len(k[1]) for k in kept)
    shape = (len(kept), width)
    out_returns, out_valid = np.zeros(shape, np.float32), np.zeros(shape, bool)
    out_days = np.full(shape, -1, np.int32)
    for row, (_, days, returns, valid) in enumerate(kept):
        out_returns[row, : len(days)], out_valid[row, : len(days)], out_days[row, : len(days)] = returns, valid, days
    lengths = np.asarray([len(k[1]) for k in kept], np.int32)
    return AssetSeries(tuple(k[0] for k in kept), out_returns, out_valid, out_days, lengths)


def load_market(
    markets: Sequence[str],
    data_dir: Optional[str] = None,
    assets: Optional[Sequence[str]] = None,
    max_days: int = 2520,
    min_days: int = 500,
    max_gap_days: int = 7,
    seed: int = 0,
) -> AssetSeries:
    """Reads, cleans and stacks the series of `markets`, optionally only the assets named in `assets`."""
    unknown = [m for m in markets if m not in MARKETS]
    if unknown or not markets:
        raise TaskError(f"finance: unknown market(s) {unknown or markets}; expected some of {', '.join(MARKETS)}")
    expanded = [m for market in markets for m in (("sp500", "fx", "indices") if market == "all" else (market,))]
    raw: RawSeries = {}
    for market in dict.fromkeys(expanded):
        if market == "synthetic":
            raw.update(synthetic_prices(seed=seed))
        else:
            folder = resolve_data_dir(data_dir, "finance") / "finance"
            raw.update(_read_market(market, str(folder)))
    if assets is not None:
        missing = sorted(set(assets) - set(raw))
        if missing:
            raise TaskError(f"finance: unknown asset(s) {', '.join(missing[:5])} in market(s) {', '.join(markets)}")
        raw = {name: raw[name] for name in assets}
    return build_series(raw, max_days, min_days, max_gap_days)


@functools.lru_cache(maxsize=4)
def _read_market(market: str, folder: str) -> RawSeries:
    if market == "sp500":
        return _read_long_table(Path(folder) / _FILES["sp500"])
    if market == "fx":
        return _read_wide_table(Path(folder) / _FILES["fx"], prefix="fx:")
    series: RawSeries = {}
    for filename in _FILES["indices"]:
        table = _read_wide_table(Path(folder) / filename, prefix="", columns=("Close", "DCOILWTICO"))
        series.update({filename.split("_")[1]: value for value in table.values()})
    return series


def _open_rows(path: Path) -> List[List[str]]:
    if not path.is_file():
        raise TaskError(
            f"finance: missing file {path}; pass data_dir=... or set LOPT_DATA_DIR to a folder with finance/"
        )
    try:
        with gzip.open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise TaskError(f"finance: cannot read {path} as gzipped CSV ({type(error).__name__})") from None
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) < 2:
        raise TaskError(f"finance: {path} has no data rows")
    return rows


def _numbers(texts: Sequence[str]) -> np.ndarray:
    try:
        return np.asarray(texts, dtype=np.float64)
    except ValueError:
        return np.asarray([_number(t) for t in texts], np.float64)


def _number(text: str) -> float:
    try:
        return float(text) if text.strip() else np.nan
    except ValueError:
        return np.nan


def _dates(texts: Sequence[str]) -> np.ndarray:
    lookup = {text: parse_date(text) for text in set(texts)}
    return np.asarray([lookup[text] for text in texts], np.int64)


def _read_long_table(path: Path) -> RawSeries:
    rows = _open_rows(path)
    header = [h.strip().lower() for h in rows[0]]
    if not {"date", "close", "name"} <= set(header):
        raise TaskError(f"finance: {path} needs columns date, close, Name; found {rows[0]}")
    body = [row for row in rows[1:] if len(row) == len(header)]
    names = np.asarray([row[header.index("name")] for row in body])
    days = _dates([row[header.index("date")] for row in body])
    prices = _numbers([row[header.index("close")] for row in body])
    order = np.argsort(names, kind="stable")
    unique, starts = np.unique(names[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    return {str(n): (days[order[a:b]], prices[order[a:b]]) for n, a, b in zip(unique, starts, ends)}


def _read_wide_table(path: Path, prefix: str, columns: Optional[Sequence[str]] = None) -> RawSeries:
    rows = _open_rows(path)
    header = rows[0]
    picked = [i for i, h in enumerate(header) if i > 0 and (columns is None or h in columns)]
    if not picked:
        raise TaskError(f"finance: {path} has none of the price columns {columns}; found {header}")
    body = [row for row in rows[1:] if len(row) == len(header) and row[0].strip()]
    days = _dates([row[0] for row in body])
    return {f"{prefix}{header[i]}": (days, _numbers([row[i] for row in body])) for i in picked}


def synthetic_prices(num_assets: int = 16, num_days: int = 2000, seed: int = 0) -> RawSeries:
    """Simulates GARCH(1,1) log prices with Student-t(5) shocks on business days from 2000-01-03."""
    rng = np.random.default_rng(seed)
    start = parse_date("2000-01-03")
    calendar = np.arange(start, start + num_days * 7 // 5 + 7)
    business = calendar[((calendar - start) % 7) < 5][:num_days]
    series: RawSeries = {}
    for a in range(num_assets):
        alpha, beta = rng.uniform(0.03, 0.12), rng.uniform(0.80, 0.86)
        level = rng.uniform(0.005, 0.02) ** 2
        omega = level * (1 - alpha - beta)
        shocks = rng.standard_t(5, num_days) / np.sqrt(5 / 3)
        variance, returns = level, np.zeros(num_days)
        for t in range(num_days):
            returns[t] = np.sqrt(variance) * shocks[t]
            variance = omega + alpha * returns[t] ** 2 + beta * variance
        series[f"synthetic_{a:02d}"] = (business, 100.0 * np.exp(np.cumsum(returns)))
    return series
