"""Daily retraining of volatility forecasters on real prices: learned optimizers per asset class against tuned Adam.

    python scripts/bench_daily_retraining.py [--data-dir DIR] [--workdir runs/daily_retraining] \
        [--out benchmarks/daily_retraining.json]

The question (the design documents' promise): when a desk refits the same model every day on
new data, does an optimizer meta-trained on that stream of problems converge 1.5-3x faster than
tuned Adam, without forecasting worse?

The model (tasks/finance_daily.py, chosen on 2015-2016 data before this benchmark was run): an
MLP 20-8-1 (ReLU) from the last 10 daily returns and their absolute values, in units of the
trailing 60-day volatility, to the next 5 days' realised volatility in the same units; trained
on the trailing 500 days by weighted mean squared error plus 0.1/2 times the squared weights;
full batch, 100 steps per refit (the fixed budget).

1. Meta-training, on refit days up to 2016-12-30 only: the learned optimizer of --config
   (configs/finance_daily.py: small_fc_lopt; configs/finance_daily_adam_multiplier.py: Adam with
   learned per-tensor multipliers) with PES, one optimizer per asset class (equities: S&P 500
   stocks; fx: FRED H.10 rates; indices: S&P 500, Nasdaq, WTI oil) and one on all three (a
   mixture, each class with its own batch of tasks). Each runs through `lopt-meta-train` in WORKDIR/<name> and resumes there.
2. Walk-forward evaluation: every trading day from --tune-start to --test-stop, every sampled
   asset is refitted on its trailing window by every optimizer, from scratch (the same fresh
   weights for every optimizer) and warm-started from the same optimizer's model of the day
   before; 100 steps each. Adam and Adam+cosine run at every learning rate of the grid; for each
   calendar month, each asset and each start, the rate with the lowest mean log final training
   loss over the previous month is the tuned one (so the first month only tunes).
3. Per refit: speedup = the project's one definition (meta_train/evaluation/speedup.py) against
   that day's tuned Adam; final training loss; out-of-sample loss of the forecast issued on the
   refit day (the next 5 days' volatility). Reported over days and assets: median, IQM and worst
   decile of the speedup, the out-of-sample loss relative to tuned Adam's with a moving-block
   bootstrap 95% interval over days, and the naive forecast (the window's mean target) for scale.

Writes --out (JSON), the markdown table and the figure beside it (.md, .png). Without the
price files it prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = {"equities": "sp500", "fx": "fx", "indices": "indices"}
OPTIMIZERS = ("equities", "fx", "indices", "all")
PRICE_FILES = ("sp500_all_stocks_5yr.csv.gz", "fred_h10_fx_daily_1971_2017.csv.gz",
               "arch_sp500_daily_1999_2018.csv.gz", "arch_nasdaq_daily_1999_2018.csv.gz",
               "arch_wti_daily_1986_2019.csv.gz")
LEARNING_RATES = (3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
BUDGET = 100
EARLY_STEP = BUDGET // 4
CLAIM_LOW = 1.5


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Returns the command-line arguments."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default="", help="folder holding finance/ (default: $LOPT_DATA_DIR)")
    parser.add_argument("--workdir", default=str(REPO / "runs" / "daily_retraining"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "daily_retraining.json"))
    parser.add_argument("--config", default=str(REPO / "configs" / "finance_daily.py"),
                        help="meta-training config of the learned optimizer (asset class and budget are set here)")
    parser.add_argument("--meta-steps", type=int, default=1500, help="meta-training steps per optimizer")
    parser.add_argument("--meta-minutes", type=float, default=6.0, help="cap on each meta-training's time")
    parser.add_argument("--stocks", type=int, default=6, help="S&P 500 stocks sampled for the evaluation")
    parser.add_argument("--fx", type=int, default=6, help="exchange rates sampled for the evaluation")
    parser.add_argument("--indices", type=int, default=3, help="indices/oil series sampled (at most 3)")
    parser.add_argument("--tune-start", default="2016-12-01", help="first refit date (this month only tunes)")
    parser.add_argument("--test-stop", default="2017-11-17",
                        help="last refit date (the FX file ends 2017-12-01, and each refit needs the next days)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def price_folder(data_dir: str) -> Optional[Path]:
    """Returns the folder of the price files, or None when any of them is missing."""
    root = data_dir or os.environ.get("LOPT_DATA_DIR", "")
    if not root:
        return None
    folder = Path(root).expanduser() / "finance"
    return folder if all((folder / name).is_file() for name in PRICE_FILES) else None


def optimizer_config_source(name: str, meta_steps: int, data_dir: str, base_config: str) -> str:
    """Returns a config file's text: `base_config` (e.g. configs/finance_daily.py) for one asset class (or all, as a
    mixture), meta-training `meta_steps` steps with the CPU split into one device per core and no end-of-run evaluation."""
    lines = [f"config.data_dir = {data_dir!r}", f"config.meta_train.num_steps = {meta_steps}",
             f"config.meta_train.meta_lr_schedule.kwargs.decay_steps = {meta_steps}",
             "config.eval.enabled = False", "config.tensorboard.mode = 'off'",
             "config.meta_train.parallel = 'shard_map'", "config.meta_train.host_devices = -1",
             "config.meta_train.task_map = 'map'"]
    if name == "all":
        lines.append("config.meta_train.num_tasks = 4")
        for label, market in CLASSES.items():
            lines.append(f"config.task.mixture.{label} = ml_collections.ConfigDict({{'family': 'finance_daily', "
                         f"'kwargs': {{**config.task.kwargs.to_dict(), 'market': {market!r}}}}})")
    else:
        lines.append(f"config.task.kwargs.market = {CLASSES[name]!r}")
    body = textwrap.indent("\n".join(lines), "    ")
    return (
        f'"""{Path(base_config).name} for the {name!r} optimizer (written by scripts/bench_daily_retraining.py)."""\n'
        "import ml_collections\n\nfrom meta_train.config import load_config\n\n\n"
        f"def get_config():\n    config = load_config({str(Path(base_config).resolve())!r})\n{body}\n"
        "    return config\n"
    )


def meta_train(name: str, workdir: Path, meta_steps: int, minutes: float, data_dir: str,
               base_config: str) -> Dict[str, Any]:
    """Meta-trains (or resumes, or skips when exported) the optimizer `name`; returns its export path and time."""
    from meta_train.files import EXPORT_FILE

    run_dir = workdir / f"lopt_{name}"
    export = run_dir / EXPORT_FILE
    if not export.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        config_file = workdir / f"lopt_{name}_config.py"
        config_file.write_text(optimizer_config_source(name, meta_steps, data_dir, base_config))
        command = ["lopt-meta-train", "--config", str(config_file), "--workdir", str(run_dir), "--no-progress",
                   "--max-minutes", str(minutes)]
        print(f"[meta-train {name}] {' '.join(command)}", flush=True)
        subprocess.run(command, check=True)
    record = json.loads((run_dir / "train_seconds.json").read_text())
    return {"export": str(export), "meta_steps": int(record["step"]), "train_seconds": float(record["seconds"])}


def sample_assets(series: Any, first_refit: int, tail: int, first_day: int, last_day: int, count: int,
                  rng: np.random.Generator) -> List[str]:
    """Returns `count` names (sorted) drawn from the assets whose refit days cover [first_day, last_day]."""
    eligible = [name for a, name in enumerate(series.names)
                if series.lengths[a] > first_refit + tail
                and series.days[a, first_refit] < first_day and series.days[a, series.lengths[a] - tail] > last_day]
    picked = rng.choice(len(eligible), size=min(count, len(eligible)), replace=False)
    return sorted(eligible[i] for i in picked)


def summarise(speedups: np.ndarray, train: np.ndarray, reference_train: np.ndarray, oos: np.ndarray,
              reference_oos: np.ndarray, naive_oos: np.ndarray) -> Dict[str, Any]:
    """Returns the row of one optimizer on a set of refits: `speedups`, `oos`, `reference_oos` and `naive_oos`
    [assets, days]; `train` and `reference_train` [assets, days, budget + 1] training curves."""
    from meta_train.evaluation.aggregates import interquartile_mean
    from meta_train.evaluation.walk_forward import block_bootstrap_ratio

    flat = speedups.reshape(-1)
    ratio, low, high = block_bootstrap_ratio(oos, reference_oos)
    return {
        "refits": int(flat.size),
        "median_speedup": float(np.median(flat)),
        "iqm_speedup": interquartile_mean(flat),
        "worst_decile_speedup": float(np.percentile(flat, 10)),
        "reached": float(np.mean(flat > 0)),
        "median_early_train_ratio": float(np.median(train[..., EARLY_STEP] / reference_train[..., EARLY_STEP])),
        "median_final_train_ratio": float(np.median(train[..., -1] / reference_train[..., -1])),
        "oos_loss": float(np.mean(oos)),
        "oos_ratio": ratio, "oos_ratio_low": low, "oos_ratio_high": high,
        "naive_oos_loss": float(np.mean(naive_oos)),
    }


def evaluate(args: argparse.Namespace, data_dir: str, exports: Dict[str, str]) -> Dict[str, Any]:
    """Runs the walk-forward refits of every optimizer; returns the results (tables, curves, setup)."""
    import jax
    import jax.numpy as jnp

    import lopt
    import tasks
    from meta_train.evaluation import walk_forward as wf
    from meta_train.evaluation.curves import learning_rate_grid
    from meta_train.evaluation.speedup import SPEEDUP_DEFINITION, speedups
    from tasks.finance_data import load_market, parse_date
    from tasks.finance_daily import iso_date

    began = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    first_day, last_day = parse_date(args.tune_start), parse_date(args.test_stop)
    template = tasks.get("finance_daily", market="synthetic")
    tail = template.horizon + template.oos_days
    counts = {"equities": args.stocks, "fx": args.fx, "indices": args.indices}
    names: Dict[str, List[str]] = {}
    for label, market in CLASSES.items():
        series = load_market([market], data_dir)
        names[label] = sample_assets(series, template.first_refit, tail, first_day, last_day, counts[label], rng)
        if not names[label]:
            raise SystemExit(f"bench_daily_retraining: no {label} series has history before {args.tune_start} and "
                             f"data after {args.test_stop}; choose other --tune-start/--test-stop")
    asset_names = [name for label in CLASSES for name in names[label]]
    asset_class = np.asarray([label for label in CLASSES for _ in names[label]])
    family = tasks.get("finance_daily", market=tuple(CLASSES.values()), assets=asset_names, data_dir=data_dir)
    series = family.forecast.series.value
    assets = np.arange(len(asset_names))
    traded = np.concatenate([series.days[a, : series.lengths[a]] for a in assets])
    calendar = np.unique(traded[(traded >= first_day) & (traded <= last_day)])
    ends = np.stack([family.refit_ends(a, calendar) for a in assets])
    for a in assets:
        low, high = family.refit_range(int(a))
        if ends[a].min() < low or ends[a].max() > high:
            raise SystemExit(f"bench_daily_retraining: {asset_names[a]} lacks history or future for the refit days")
    periods = wf.month_periods(calendar)
    test = periods > periods[0]
    print(f"[evaluate] {len(asset_names)} assets x {len(calendar)} days ({int(test.sum())} test days), "
          f"budget {BUDGET}", flush=True)

    timings: Dict[str, float] = {}
    runs: Dict[str, Any] = {}
    for baseline in ("adam", "adam_cosine"):
        started = time.perf_counter()
        optimizer = lopt.get(baseline)
        runs[baseline] = wf.refit_runs(family, optimizer, learning_rate_grid(optimizer, LEARNING_RATES), assets,
                                       ends, BUDGET, seed=args.seed)
        timings[baseline] = time.perf_counter() - started
        print(f"[evaluate] {baseline} grid: {timings[baseline]:.0f} s", flush=True)
    loaded = {name: lopt.load(path) for name, path in exports.items()}
    learned = loaded[OPTIMIZERS[0]].optimizer
    if any(item.optimizer != learned for item in loaded.values()):
        raise SystemExit("bench_daily_retraining: the meta-trained optimizers differ in architecture")
    started = time.perf_counter()
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[loaded[name].meta_params for name in OPTIMIZERS])
    learned_runs = wf.refit_runs(family, learned, stacked, assets, ends, BUDGET, seed=args.seed)
    timings["learned"] = time.perf_counter() - started
    print(f"[evaluate] {len(OPTIMIZERS)} learned optimizers: {timings['learned']:.0f} s", flush=True)
    naive = wf.mean_forecast_losses(family, assets, ends)

    results: Dict[str, Any] = {"modes": {}}
    for m, mode in enumerate(wf.MODES):
        rows: Dict[str, Any] = {}
        curves: Dict[str, Any] = {}
        chosen_rates: Dict[str, Any] = {}
        for baseline in ("adam", "adam_cosine"):
            run = runs[baseline]
            choice = wf.choose_on_previous_period(run.train_losses[:, :, :, m, -1], periods)
            label = f"{baseline} (tuned)"
            curves[label] = (wf.take_choice(run.train_losses[..., m, :], choice),
                             wf.take_choice(run.oos_losses[..., m, :], choice))
            picked = choice[test]
            chosen_rates[label] = {f"{lr:g}": int(np.sum(picked == i)) for i, lr in enumerate(LEARNING_RATES)}
        for i, name in enumerate(OPTIMIZERS):
            curves[f"lopt_{name}"] = (learned_runs.train_losses[i, :, :, m, :], learned_runs.oos_losses[i, :, :, m, :])
        reference_train, reference_oos = curves["adam (tuned)"]
        for label, (train, oos) in curves.items():
            rows[label] = {}
            for group in list(CLASSES) + ["all assets"]:
                in_group = np.ones(len(assets), bool) if group == "all assets" else asset_class == group
                sel = np.ix_(in_group, test)
                ref_t, opt_t = reference_train[sel], train[sel]
                gains = speedups(opt_t[..., :BUDGET], ref_t[..., :BUDGET])
                rows[label][group] = summarise(gains, opt_t, ref_t, oos[sel][..., BUDGET],
                                               reference_oos[sel][..., BUDGET], naive[sel])
                if group == "all assets":
                    rows[label][group]["oos_curve"] = np.mean(oos[sel], axis=(0, 1)).tolist()
                    rows[label][group]["train_curve"] = np.mean(train[sel], axis=(0, 1)).tolist()
                    rows[label][group]["speedups"] = {c: np.round(speedups(
                        train[np.ix_(asset_class == c, test)][..., :BUDGET],
                        reference_train[np.ix_(asset_class == c, test)][..., :BUDGET]).reshape(-1), 4).tolist()
                        for c in CLASSES}
        results["modes"][mode] = {"rows": rows, "chosen_learning_rates": chosen_rates}
    results["setup"] = {
        "assets": names, "calendar": [iso_date(calendar[0]), iso_date(calendar[-1])],
        "tuning_month": iso_date(calendar[0])[:7], "test_days": int(test.sum()), "days": int(len(calendar)),
        "test_period": [iso_date(calendar[test][0]), iso_date(calendar[test][-1])],
        "budget": BUDGET, "learning_rates": list(LEARNING_RATES), "speedup_definition": SPEEDUP_DEFINITION,
        "model": {"window": family.window, "hidden": list(family.forecast.layer_sizes[1:-1]), "l2": family.l2,
                  "train_days": family.train_days, "horizon": family.horizon, "target": family.forecast.target,
                  "oos_days": family.oos_days},
        "refits_per_optimizer": int(len(assets) * len(calendar) * len(wf.MODES)),
    }
    results["evaluation_seconds"] = {**timings, "total": time.perf_counter() - began}
    return results


def verdict(results: Dict[str, Any]) -> List[str]:
    """Returns one line per learned optimizer and start on the claim: median speedup >= 1.5 on its own asset class
    (all assets for the all-class optimizer) with an out-of-sample loss not significantly above tuned Adam's."""
    lines = []
    for mode, data in results["modes"].items():
        for name in OPTIMIZERS:
            group = "all assets" if name == "all" else name
            row = data["rows"][f"lopt_{name}"][group]
            fast = row["median_speedup"] >= CLAIM_LOW
            same = row["oos_ratio_low"] <= 1.0
            holds = "holds" if fast and same else "does not hold"
            lines.append(f"{mode}, lopt_{name} on {group}: median speedup {row['median_speedup']:.2f}x, "
                         f"out-of-sample loss {row['oos_ratio']:.3f}x tuned Adam's "
                         f"[{row['oos_ratio_low']:.3f}, {row['oos_ratio_high']:.3f}]: the claim {holds}")
    return lines


def markdown(results: Dict[str, Any]) -> str:
    """Returns the markdown tables of the results."""
    setup = results["setup"]
    out = [f"Refits of {sum(len(v) for v in setup['assets'].values())} assets on {setup['test_days']} test days "
           f"({setup['test_period'][0]}..{setup['test_period'][1]}; learning rates tuned on the month before each "
           f"month, starting {setup['tuning_month']}), {setup['budget']} full-batch steps each.", ""]
    for mode, data in results["modes"].items():
        out += [f"### {mode.capitalize()} starts", "",
                f"| optimizer | assets | median speedup | IQM | worst decile | reached | train loss / tuned Adam's "
                f"at step {EARLY_STEP} (median) | at step {BUDGET} | out-of-sample loss | / tuned Adam's [95% CI] |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for group in list(CLASSES) + ["all assets"]:
            naive = None
            for label, per_group in data["rows"].items():
                row = per_group[group]
                naive = row["naive_oos_loss"]
                out.append(f"| {label} | {group} | {row['median_speedup']:.2f} | {row['iqm_speedup']:.2f} | "
                           f"{row['worst_decile_speedup']:.2f} | {row['reached']:.0%} | "
                           f"{row['median_early_train_ratio']:.3f} | {row['median_final_train_ratio']:.3f} | "
                           f"{row['oos_loss']:.4f} | {row['oos_ratio']:.3f} "
                           f"[{row['oos_ratio_low']:.3f}, {row['oos_ratio_high']:.3f}] |")
            out.append(f"| naive forecast (window mean) | {group} | | | | | | | {naive:.4f} | |")
        out += ["", "Tuned learning rates chosen over the test days (refits per rate): " + "; ".join(
            f"{label}: " + ", ".join(f"{lr} x{n}" for lr, n in counts.items() if n)
            for label, counts in data["chosen_learning_rates"].items()), ""]
    out += ["### The claim: 1.5-3x faster than tuned Adam with no loss of out-of-sample quality", ""]
    out += [f"- {line}" for line in verdict(results)]
    return "\n".join(out) + "\n"


def plot(results: Dict[str, Any], path: Path) -> None:
    """Draws the speedup distributions per optimizer and asset class, and out-of-sample loss against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results["modes"])
    fig, axes = plt.subplots(3, len(modes), figsize=(6.5 * len(modes), 12.5))
    colors = {"adam (tuned)": "black", "adam_cosine (tuned)": "gray", "lopt_equities": "tab:blue",
              "lopt_fx": "tab:orange", "lopt_indices": "tab:green", "lopt_all": "tab:red"}
    for column, mode in enumerate(modes):
        rows = results["modes"][mode]["rows"]
        labels = [label for label in rows if label != "adam (tuned)"]
        ax = axes[0, column]
        width = 0.8 / len(labels)
        for k, label in enumerate(labels):
            data = [rows[label]["all assets"]["speedups"][group] for group in CLASSES]
            positions = np.arange(len(CLASSES)) + (k - (len(labels) - 1) / 2) * width
            box = ax.boxplot(data, positions=positions, widths=width * 0.9, whis=(10, 90), showfliers=False,
                             patch_artist=True)
            for patch in box["boxes"]:
                patch.set_facecolor(colors[label])
                patch.set_alpha(0.6)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhspan(1.5, 3.0, color="gold", alpha=0.15, label="claimed 1.5-3x")
        ax.set_xticks(range(len(CLASSES)), list(CLASSES))
        ax.set_ylabel("speedup vs tuned Adam (box 25-75%, whiskers 10-90%)")
        ax.set_title(f"{mode} starts: speedup per refit (test days)")
        handles = [plt.Rectangle((0, 0), 1, 1, color=colors[label], alpha=0.6) for label in labels]
        ax.legend(handles, labels, fontsize=7, loc="upper right")
        ax = axes[1, column]
        for label, per_group in rows.items():
            curve = per_group["all assets"]["train_curve"]
            ax.plot(np.arange(len(curve)), curve, color=colors[label], label=label, lw=1.2)
        reference = rows["adam (tuned)"]["all assets"]["train_curve"]
        ax.set_yscale("log")
        ax.set_ylim(0.95 * min(min(v["all assets"]["train_curve"]) for v in rows.values()), 1.6 * reference[-1])
        ax.set_xlabel("steps of the day's refit")
        ax.set_ylabel("training loss (mean over refits)")
        ax.set_title(f"{mode} starts: training loss along the refit")
        ax.legend(fontsize=7)
        ax = axes[2, column]
        for label, per_group in rows.items():
            curve = per_group["all assets"]["oos_curve"]
            ax.plot(np.arange(len(curve)), curve, color=colors[label], label=label, lw=1.2)
        ax.axhline(rows["adam (tuned)"]["all assets"]["naive_oos_loss"], color="purple", ls="--", lw=0.8,
                   label="naive forecast")
        ax.set_xlabel("steps of the day's refit")
        ax.set_ylabel("out-of-sample loss (mean over refits)")
        ax.set_title(f"{mode} starts: forecast quality along the refit")
        # curves far above tuned Adam's (a diverging optimizer) leave the frame rather than flatten the rest
        low = min(min(v["all assets"]["oos_curve"][10:]) for v in rows.values())
        reference = rows["adam (tuned)"]["all assets"]["oos_curve"]
        ax.set_ylim(0.97 * low, 1.25 * max(reference[10:]))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the benchmark; returns the exit status (2 when the price data is missing)."""
    args = parse_args(argv)
    if not Path(args.config).is_file():
        print(f"bench_daily_retraining: no config file {args.config}", file=sys.stderr)
        return 2
    folder = price_folder(args.data_dir)
    if folder is None:
        where = Path(args.data_dir or os.environ.get("LOPT_DATA_DIR", "") or "(unset)") / "finance"
        print(f"bench_daily_retraining: no price data at {where}; pass --data-dir or set LOPT_DATA_DIR "
              "to a folder with finance/ (nothing measured)", file=sys.stderr)
        return 2
    data_dir = str(folder.parent.resolve())
    began = time.perf_counter()
    workdir = Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    trained = {name: meta_train(name, workdir, args.meta_steps, args.meta_minutes, data_dir, args.config)
               for name in OPTIMIZERS}
    meta_seconds = time.perf_counter() - began
    results = evaluate(args, data_dir, {name: record["export"] for name, record in trained.items()})
    results["meta_training"] = trained
    results["seconds"] = {"meta_training_this_invocation": meta_seconds, "total": time.perf_counter() - began}
    results["machine"] = f"{platform.machine()} {os.cpu_count()} CPUs visible, no GPU"
    results["date"] = datetime.date.today().isoformat()
    results["command"] = "python scripts/bench_daily_retraining.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results["verdict"] = verdict(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    plot(results, out.with_suffix(".png"))
    print(markdown(results))
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')} in {results['seconds']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
