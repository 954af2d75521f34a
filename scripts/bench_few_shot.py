"""Few-shot benchmark: the worked example's LSTM optimizer, meta-trained on some MNIST classes, against tuned SGD
and Adam, small_fc_lopt and the untrained LSTM on 5-way episodes of held-out classes.

    python scripts/bench_few_shot.py --data-dir /work/shared/data --workdir runs/bench_few_shot \\
        --out benchmarks/few_shot.json

For each shot count (1 and 5): the 2-layer 20-unit LSTM reading each weight's gradient and the
loss (configs/few_shot_lstm.py) and small_fc_lopt are meta-trained the same way, by exact
backprop through whole 5-step episodes of digits 0-4 (MNIST train split), on the query loss,
with Adam at 1e-3 and 4 episodes per meta-step; SGD's and Adam's learning rates are picked on
meta-training episodes (lowest mean query loss after 5 steps). All are then run for 10 inner
steps on the same held-out episodes of digits 5-9 (MNIST test split: classes and images never
seen), and query loss and accuracy after 1, 5 and 10 steps are reported with 95% intervals.
The model is a D-64-5 MLP: D = 784 (--image-size 28) is the worked example; the default 16x16
images (D = 256) keep the whole benchmark within 30 minutes on 2 CPU cores.

Writes OUT (JSON), OUT with .md (table) and .png (accuracy and loss against the inner step, with
95% bands). Rerunning the same command resumes: finished meta-training runs and evaluations are
read back from the workdir.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np

import lopt
import tasks
from meta_train import build as build_lib
from meta_train import config as config_lib
from meta_train import run
from meta_train.evaluation import few_shot
from meta_train.evaluation.curves import held_out_task_keys
from meta_train.files import tree_digest, write_text_atomic

REPO = Path(__file__).resolve().parents[1]
WORKED_EXAMPLE = REPO / "configs" / "few_shot_lstm.py"
FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10")
REPORT_STEPS = (1, 5, 10)
LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)
LSTM, SMALL_FC, UNTRAINED, SGD, ADAM = ("LSTM (meta-trained)", "small_fc_lopt (meta-trained)", "LSTM (untrained)",
                                        "SGD (tuned lr)", "Adam (tuned lr)")
SMALL_FC_KWARGS = {"hidden_sizes": (32, 32), "step_mult": 1e-2, "exp_mult": 1e-3}


class BenchError(ValueError):
    """Arguments or data the benchmark cannot run with."""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Returns the benchmark's command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("LOPT_DATA_DIR", ""), help="folder with the datasets")
    p.add_argument("--workdir", default="runs/bench_few_shot", help="meta-training runs and cached evaluations")
    p.add_argument("--out", default="benchmarks/few_shot.json", help="JSON result; .md and .png go beside it")
    p.add_argument("--dataset", default="mnist", help="image dataset (digits needs no files)")
    p.add_argument("--image-size", type=int, default=16, help="image side: 28 is the worked example's 784 inputs")
    p.add_argument("--hidden", type=int, default=64, help="hidden width of the D-H-5 MLP")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", nargs="+", type=int, default=[1, 5])
    p.add_argument("--queries", type=int, default=15, help="query examples per class")
    p.add_argument("--train-classes", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="meta-training classes")
    p.add_argument("--test-classes", nargs="+", type=int, default=[5, 6, 7, 8, 9], help="held-out test classes")
    p.add_argument("--test-split", default="test", help="dataset split the held-out episodes' images come from")
    p.add_argument("--inner-steps", type=int, default=5, help="inner steps of meta-training and lr tuning")
    p.add_argument("--eval-steps", type=int, default=10, help="inner steps of the test episodes")
    p.add_argument("--meta-steps", type=int, default=300, help="meta-steps of each learned optimizer")
    p.add_argument("--tune-episodes", type=int, default=200, help="meta-training episodes the lr is tuned on")
    p.add_argument("--test-episodes", type=int, default=600, help="held-out test episodes")
    p.add_argument("--learning-rates", nargs="+", type=float, default=list(LEARNING_RATES))
    p.add_argument("--chunk", type=int, default=25, help="episodes evaluated together (memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def check_arguments(args: argparse.Namespace) -> None:
    """Raises BenchError (one line) for missing data or impossible arguments."""
    if args.dataset in FILE_DATASETS:
        folder = Path(args.data_dir or ".") / args.dataset
        if not args.data_dir or not folder.is_dir():
            raise BenchError(
                f"no {args.dataset} folder in the data folder {args.data_dir or '(none given)'!r}: pass --data-dir "
                f"(or set LOPT_DATA_DIR) to a folder holding {args.dataset}/, or use --dataset digits")
    train, test = set(args.train_classes), set(args.test_classes)
    if train & test:
        raise BenchError(f"--train-classes and --test-classes share {sorted(train & test)}; "
                         "test classes must be held out")
    if min(len(train), len(test)) < args.ways:
        raise BenchError(f"need at least --ways={args.ways} classes on each side, got {sorted(train)} and "
                         f"{sorted(test)}")
    if args.test_episodes < 2 or args.tune_episodes < 1 or args.meta_steps < 1:
        raise BenchError("need --test-episodes >= 2, --tune-episodes >= 1 and --meta-steps >= 1")
    if not 1 <= args.inner_steps <= args.eval_steps:
        raise BenchError(f"need 1 <= --inner-steps <= --eval-steps, got {args.inner_steps}, {args.eval_steps}")


def family_kwargs(args: argparse.Namespace, shots: int, classes: Sequence[int], split: str) -> Dict[str, Any]:
    """Returns the few_shot family arguments of the worked example with this run's dataset, size and classes."""
    config = config_lib.load_config(WORKED_EXAMPLE)
    kwargs = build_lib.config_kwargs(config.task.kwargs)
    kwargs.update(dataset=args.dataset, image_size=args.image_size, hidden=(args.hidden,), ways=args.ways, shots=shots,
                  queries=args.queries, classes=tuple(classes), example_split=split)
    return kwargs


def build_families(args: argparse.Namespace, shots: int) -> Tuple[tasks.TaskFamily, tasks.TaskFamily]:
    """Returns (meta-training family: train classes, train split; held-out family: test classes, test split)."""
    train = build_lib.build_task_family("few_shot", family_kwargs(args, shots, args.train_classes, "train"),
                                        data_dir=args.data_dir, where="meta-training episodes")
    test = build_lib.build_task_family("few_shot", family_kwargs(args, shots, args.test_classes, args.test_split),
                                       data_dir=args.data_dir, where="held-out episodes")
    return train, test


def meta_config(args: argparse.Namespace, shots: int, optimizer: str) -> ml_collections.ConfigDict:
    """Returns the worked example's meta-training config for `shots`, with `optimizer` (l2l_lstm or small_fc_lopt)."""
    config = config_lib.load_config(WORKED_EXAMPLE)
    config.seed = args.seed
    config.data_dir = args.data_dir
    config.task.kwargs = ml_collections.ConfigDict(family_kwargs(args, shots, args.train_classes, "train"))
    config.meta_train.estimator.kwargs.trunc_length = args.inner_steps
    config.meta_train.horizon.kwargs.length = args.inner_steps
    config.meta_train.num_steps = args.meta_steps
    config.log_every = 10
    config.tensorboard.mode = "off"
    if optimizer == "small_fc_lopt":
        config.optimizer.name = "small_fc_lopt"
        config.optimizer.kwargs = ml_collections.ConfigDict(SMALL_FC_KWARGS)
    return config


def untrained_meta_params(optimizer: lopt.LearnedOptimizer, seed: int) -> Any:
    """Returns the meta-params meta-training with `seed` starts from (the trainer's own draw)."""
    params_key, _ = jax.random.split(jax.random.key(seed))
    return optimizer.init(params_key)


def cached_curves(path: Path, identity: Dict[str, Any], compute) -> few_shot.EpisodeCurves:
    """Returns the curves stored at `path` if they were computed for `identity`, else computes and stores them."""
    if path.exists():
        with np.load(path) as saved:
            if json.loads(str(saved["identity"])) == identity:
                return few_shot.EpisodeCurves(saved["losses"], saved["accuracies"])
    curves = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, identity=json.dumps(identity, sort_keys=True), losses=curves.losses,
             accuracies=curves.accuracies)
    os.replace(partial, path)
    return curves


def summarize(curves: few_shot.EpisodeCurves, steps: Sequence[int]) -> Dict[str, Any]:
    """Returns mean query accuracy and loss with 95% intervals after each of `steps` inner steps."""
    out = {}
    for step in steps:
        acc = few_shot.mean_confidence_interval(curves.accuracies[:, step])
        loss = few_shot.mean_confidence_interval(curves.losses[:, step])
        out[str(step)] = {"accuracy": acc._asdict(), "loss": loss._asdict()}
    return out


def paired_difference(a: few_shot.EpisodeCurves, b: few_shot.EpisodeCurves, step: int) -> Dict[str, float]:
    """Returns the mean accuracy of `a` minus `b` after `step` steps over the same episodes, with its 95% interval."""
    return few_shot.mean_confidence_interval(a.accuracies[:, step] - b.accuracies[:, step])._asdict()


def run_setting(args: argparse.Namespace, shots: int, workdir: Path) -> Dict[str, Any]:
    """Meta-trains, tunes and evaluates every optimizer for one shot count; returns its results and timings."""
    timings: Dict[str, float] = {}
    train_family, test_family = build_families(args, shots)
    learned: Dict[str, Tuple[lopt.LearnedOptimizer, Any]] = {}
    training: Dict[str, Any] = {}
    for label, name in ((LSTM, "l2l_lstm"), (SMALL_FC, "small_fc_lopt")):
        began = time.perf_counter()
        summary = run.meta_train(meta_config(args, shots, name), workdir / f"{shots}shot_{name}",
                                 show_progress=not args.no_progress)
        loaded = lopt.load(summary["export"])
        learned[label] = (loaded.optimizer, loaded.meta_params)
        training[label] = {"meta_steps": summary["meta_steps"], "train_seconds": summary["train_seconds"],
                           "final_meta_loss": summary["last_metrics"].get("meta_loss")}
        timings[f"meta_train {label}"] = time.perf_counter() - began
    lstm = learned[LSTM][0]
    learned[UNTRAINED] = (lstm, untrained_meta_params(lstm, args.seed))

    began = time.perf_counter()
    tune_keys = held_out_task_keys(args.seed + 1, args.tune_episodes)
    tuning = {}
    for label, name in ((SGD, "sgd"), (ADAM, "adam")):
        baseline = lopt.get(name)
        choice = few_shot.tune_learning_rate(train_family, baseline, args.learning_rates, tune_keys, args.inner_steps,
                                             chunk=args.chunk)
        tuning[label] = choice._asdict()
        learned[label] = (baseline, baseline.with_learning_rate(None, choice.learning_rate))
    timings["tune learning rates"] = time.perf_counter() - began

    test_keys = held_out_task_keys(args.seed, args.test_episodes)
    episodes = {"shots": shots, "ways": args.ways, "queries": args.queries, "classes": list(args.test_classes),
                "split": args.test_split, "dataset": args.dataset, "image_size": args.image_size,
                "hidden": args.hidden, "count": args.test_episodes, "seed": args.seed, "steps": args.eval_steps}
    curves = {}
    for label, (optimizer, meta_params) in learned.items():
        began = time.perf_counter()
        identity = {"optimizer": optimizer.name, "config": json.loads(json.dumps(optimizer.config)),
                    "meta_params": tree_digest(meta_params), "episodes": episodes}
        path = workdir / "evaluation" / f"{shots}shot_{re.sub(r'[^A-Za-z0-9_]+', '_', label).strip('_')}.npz"
        curves[label] = cached_curves(path, identity, lambda: few_shot.episode_curves(
            test_family, optimizer, meta_params, test_keys, args.eval_steps, chunk=args.chunk))
        timings[f"evaluate {label}"] = time.perf_counter() - began

    steps = [s for s in REPORT_STEPS if s <= args.eval_steps]
    best_baseline = max((SGD, ADAM), key=lambda label: float(np.mean(curves[label].accuracies[:, args.inner_steps])))
    return {
        "shots": shots,
        "training": training,
        "tuning": tuning,
        "results": {label: summarize(c, steps) for label, c in curves.items()},
        "curves": {label: {"accuracy": [few_shot.mean_confidence_interval(c.accuracies[:, t])._asdict()
                                        for t in range(args.eval_steps + 1)],
                           "loss": [few_shot.mean_confidence_interval(c.losses[:, t])._asdict()
                                    for t in range(args.eval_steps + 1)]}
                   for label, c in curves.items()},
        "lstm_minus_best_baseline": {"baseline": best_baseline, "step": args.inner_steps,
                                     "accuracy": paired_difference(curves[LSTM], curves[best_baseline],
                                                                   args.inner_steps)},
        "lstm_minus": {label: {str(step): paired_difference(curves[LSTM], curves[label], step) for step in steps}
                       for label in curves if label != LSTM},
        "nonfinite_episodes": {label: int(np.sum(~np.isfinite(c.losses[:, -1]))) for label, c in curves.items()},
        "seconds": timings,
    }


def _interval(entry: Dict[str, float], scale: float = 1.0, digits: int = 1) -> str:
    half = (entry["high"] - entry["low"]) / 2 * scale
    return f"{entry['value'] * scale:.{digits}f} ± {half:.{digits}f}"


def summary_markdown(result: Dict[str, Any]) -> str:
    """Returns the result as markdown tables: accuracy (%) and loss after each reported step, per shot count."""
    setup = result["setup"]
    lines = [
        f"# Few-shot: {setup['ways']}-way, {setup['input_size']}-{setup['hidden']}-{setup['ways']} MLP, "
        f"held-out {setup['dataset']} classes {setup['test_classes']}", "",
        f"Command: `{result['command']}`", "",
        f"Machine: {result['machine']}; {result['date']}; total {result['total_seconds'] / 60:.1f} min wall, "
        f"{result['cpu_seconds'] / 60:.1f} min CPU (load average {result['load_average'][0]:.1f} at the start, "
        f"{result['load_average'][1]:.1f} at the end).", "",
        f"Meta-training on classes {setup['train_classes']} ({setup['dataset']} train split), "
        f"{setup['meta_steps']} meta-steps of 4 episodes each, exact backprop through {setup['inner_steps']}-step "
        f"episodes (tbptt with truncation = episode), query-loss meta-objective, Adam 1e-3. Test: "
        f"{setup['test_episodes']} episodes of the held-out classes ({setup['test_split']} split); "
        "mean ± 95% interval (1.96 standard errors).", "",
    ]
    for setting in result["settings"]:
        steps = list(next(iter(setting["results"].values())))
        lines += [f"## 5-way {setting['shots']}-shot", "",
                  "| optimizer | " + " | ".join(f"acc. % after {s}" for s in steps) + " | "
                  + " | ".join(f"loss after {s}" for s in steps) + " |",
                  "|---|" + "---|" * (2 * len(steps))]
        for label, entry in setting["results"].items():
            lr = setting["tuning"].get(label, {}).get("learning_rate")
            name = f"{label}, lr {lr:g}" if lr is not None else label
            lines.append(f"| {name} | " + " | ".join(_interval(entry[s]["accuracy"], 100) for s in steps) + " | "
                         + " | ".join(_interval(entry[s]["loss"], digits=3) for s in steps) + " |")
        diff = setting["lstm_minus_best_baseline"]
        other = setting["lstm_minus"][SMALL_FC][str(diff["step"])]
        lines += ["", f"Meta-trained LSTM minus {diff['baseline']} after {diff['step']} steps, paired over the same "
                      f"episodes: {_interval(diff['accuracy'], 100)} accuracy points; minus {SMALL_FC}: "
                      f"{_interval(other, 100)}.", ""]
    return "\n".join(lines)


def plot(result: Dict[str, Any], path: Path) -> None:
    """Draws query accuracy and loss against the inner step with 95% bands: one column per shot count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    fig, axes = plt.subplots(2, len(settings), figsize=(5.5 * len(settings), 7.5), squeeze=False)
    for column, setting in enumerate(settings):
        for row, metric in enumerate(("accuracy", "loss")):
            ax = axes[row, column]
            for label, curve in setting["curves"].items():
                steps = np.arange(len(curve[metric]))
                scale = 100.0 if metric == "accuracy" else 1.0
                mean = np.array([c["value"] for c in curve[metric]]) * scale
                low = np.array([c["low"] for c in curve[metric]]) * scale
                high = np.array([c["high"] for c in curve[metric]]) * scale
                (line,) = ax.plot(steps, mean, label=label, marker="o", markersize=3)
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
            ax.axvline(result["setup"]["inner_steps"], color="grey", linestyle=":", linewidth=1,
                       label="meta-training / tuning horizon")
            ax.set_xlabel("inner step")
            ax.set_ylabel("query accuracy (%)" if metric == "accuracy" else "query loss")
            ax.set_title(f"5-way {setting['shots']}-shot, held-out classes")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine() -> str:
    """Returns a short description of this machine."""
    return (f"{os.cpu_count()}-core {platform.machine()} CPU ({jax.default_backend()}), "
            f"Python {platform.python_version()}")


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the benchmark and writes OUT (.json, .md, .png); returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        check_arguments(args)
    except BenchError as err:
        print(f"bench_few_shot: {err}", file=sys.stderr)
        return 2
    began, cpu_began, load_began = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    workdir = Path(args.workdir)
    try:
        settings = [run_setting(args, shots, workdir) for shots in args.shots]
    except (BenchError, config_lib.ConfigError, tasks.TaskError) as err:
        print(f"bench_few_shot: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    input_size = args.image_size ** 2 * (3 if args.dataset == "cifar10" else 1)
    result = {
        "command": "python scripts/bench_few_shot.py " + shlex.join(argv),
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "total_seconds": time.perf_counter() - began,
        "cpu_seconds": time.process_time() - cpu_began,
        "load_average": [load_began, os.getloadavg()[0]],
        "setup": {"dataset": args.dataset, "input_size": input_size, "hidden": args.hidden, "ways": args.ways,
                  "queries": args.queries, "train_classes": list(args.train_classes),
                  "test_classes": list(args.test_classes), "test_split": args.test_split,
                  "inner_steps": args.inner_steps, "eval_steps": args.eval_steps, "meta_steps": args.meta_steps,
                  "tune_episodes": args.tune_episodes, "test_episodes": args.test_episodes,
                  "learning_rates": list(args.learning_rates), "estimator": "tbptt, truncation = episode",
                  "lstm": "l2l_lstm(hidden_size=20, num_layers=2, loss_input=True)",
                  "small_fc_lopt": SMALL_FC_KWARGS},
        "settings": settings,
    }
    write_text_atomic(out, json.dumps(result, indent=2))
    write_text_atomic(out.with_suffix(".md"), summary_markdown(result))
    plot(result, out.with_suffix(".png"))
    print(summary_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
