"""Ablation of learned-optimizer inputs and meta-regularisation on one fixed small benchmark: each row meta-trains
with the same budget, then every row is judged on held-out tasks against per-task tuned Adam, side by side.

    flock /tmp/lopt-bench.lock nice -n 5 python scripts/bench_features.py --meta-steps 300 --num-tasks 4 \\
        --workdir runs/features_ablation --out benchmarks/features_ablation.json [--rows baseline log_abs ...]

Benchmark: configs/feature_lopt.py, PES meta-training on small CNNs (8 and 16 channels, 3x3 kernels,
average pooling) classifying scikit-learn's 8x8 digits (no data files), --num-tasks tasks per
meta-step, truncations of 20 steps, inner runs of 200 steps; every row gets --meta-steps meta-steps
with the meta-learning rate cosine-decayed over them. Rows (each a change to that config):

- `baseline`: feature_lopt with small_fc_lopt's inputs (gradient, parameter, momenta, time);
- `direction`, `log_abs`, `variance`, `hessian_diag`, `secant`: the baseline plus that one feature
  (lopt/feature_sets.py); `all`: the baseline plus all five;
- `conv_lopt`: the convolutional learned optimizer (when this lopt registers it);
- `reg_small`, `reg_large`: the baseline meta-trained with the meta-regulariser
  (`config.meta_train.regularizer`, when this version has it) at a small and a large weight;
  lambda = 0 is the baseline row.

Per row: the held-out final training and validation loss (8 tasks the meta-trainer never saw,
200 steps, one seed) and the median speedup, against Adam with its learning rate tuned per task
(lopt-evaluate's pieces, meta_train/evaluation); the step cost against Adam (one jitted training
step on one CNN task, including the Hessian-vector product for rows that read hessian_diag,
medians of interleaved chunks), on the benchmark's CNN (about 1,400 parameters, where the
network's own cost dominates) and on a 64-128-channel CNN of the family (about 76,000); the
optimizer state's bytes per parameter. Each row meta-trains
in WORKDIR/<row> through `lopt-meta-train` (rerunning resumes unfinished rows and skips finished
ones); the evaluation resumes too. Writes OUT (JSON) and OUT with .md (the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
BASE_CONFIG = REPO / "configs" / "feature_lopt.py"
BASELINE_FEATURES = ("gradient", "parameter", "momenta", "time")
ADDED_FEATURES = ("direction", "log_abs", "variance", "hessian_diag", "secant")
REGULARIZER_WEIGHTS = {"reg_small": 0.01, "reg_large": 1.0}
EVAL_TASKS, EVAL_STEPS = 8, 200
WIDE_CHANNELS = (64, 128)  # a wider CNN of the same family, where the optimizer's own cost is not hidden


@dataclasses.dataclass(frozen=True)
class Row:
    """One ablation row: what it changes (Python statements on `config`, applied to configs/feature_lopt.py) and
    what this version of the project must have for it (None, "conv_lopt" or "regularizer")."""

    change: str
    needs: Optional[str] = None


def _features(names) -> str:
    return f"config.optimizer.kwargs.features = {tuple(names)!r}"


def regularizer_change(weight: float) -> str:
    """Returns the config statements meta-training the baseline with the meta-regulariser at `weight`."""
    return (f"config.meta_train.regularizer.l2_weight = {weight!r}\n"
            f"config.meta_train.regularizer.smoothness_weight = {weight!r}")


CONV_LOPT_CHANGE = ("config.optimizer.name = 'conv_lopt'\n"
                    "config.optimizer.kwargs = ml_collections.ConfigDict("
                    "{'hidden_sizes': (32, 32), 'step_mult': 1e-2, 'exp_mult': 1e-3})")
VALID_META_LOSS_CHANGE = "config.meta_train.meta_loss = 'valid'"

ROWS: Dict[str, Row] = {
    "baseline": Row(_features(BASELINE_FEATURES)),
    **{name: Row(_features(BASELINE_FEATURES + (name,))) for name in ADDED_FEATURES},
    "all": Row(_features(BASELINE_FEATURES + ADDED_FEATURES)),
    "conv_lopt": Row(CONV_LOPT_CHANGE, needs="conv_lopt"),
    **{name: Row(regularizer_change(weight), needs="regularizer") for name, weight in REGULARIZER_WEIGHTS.items()},
    # meta-trained on the validation loss of the inner run instead of its training loss
    "baseline_valid": Row(f"{_features(BASELINE_FEATURES)}\n{VALID_META_LOSS_CHANGE}"),
    "conv_lopt_valid": Row(f"{CONV_LOPT_CHANGE}\n{VALID_META_LOSS_CHANGE}", needs="conv_lopt"),
}


def available(row: Row) -> bool:
    """Returns whether this version of the project has what `row` needs."""
    if row.needs == "conv_lopt":
        import lopt
        return "conv_lopt" in lopt.registered_names()
    if row.needs == "regularizer":
        from meta_train import config as config_lib
        return "regularizer" in config_lib.base_config().meta_train
    return True


def row_config_source(change: str, meta_steps: int, num_tasks: int = 4) -> str:
    """Returns a config file's text: configs/feature_lopt.py with `change` applied and a run of `meta_steps`
    meta-steps of `num_tasks` tasks each, whose meta-learning rate decays over them."""
    budget = (f"config.meta_train.num_steps = {meta_steps}\n"
              f"config.meta_train.num_tasks = {num_tasks}\n"
              f"config.meta_train.meta_lr_schedule.kwargs.decay_steps = {meta_steps}\n"
              "config.eval.enabled = False")
    body = textwrap.indent(f"{change}\n{budget}", "    ")
    return (
        '"""configs/feature_lopt.py with one ablation change (written by scripts/bench_features.py)."""\n'
        "import ml_collections\n\nfrom meta_train.config import load_config\n\n\n"
        f"def get_config():\n    config = load_config({str(BASE_CONFIG)!r})\n{body}\n    return config\n"
    )


def meta_train_row(name: str, workdir: Path, meta_steps: int, num_tasks: int) -> Dict[str, Any]:
    """Meta-trains one row (resuming a started one, skipping a finished one); returns its export and training."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "config.py"
    config_file.write_text(row_config_source(ROWS[name].change, meta_steps, num_tasks))
    run_dir = workdir / "run"
    command = ["lopt-meta-train", "--config", str(config_file), "--workdir", str(run_dir), "--no-progress"]
    export = run_dir / "optimizer.lopt"
    if not _finished(run_dir, meta_steps):
        print(f"[{name}] {shlex.join(command)}", flush=True)
        subprocess.run(command, check=True)
    seconds = json.loads((run_dir / "train_seconds.json").read_text())["seconds"]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    last = json.loads(lines[-1]) if lines else {}
    return {"export": str(export), "meta_train_seconds": seconds, "command": shlex.join(command),
            "last_meta_loss": last.get("meta_loss"), "inner_steps_per_s": last.get("inner_steps_per_s")}


def _finished(run_dir: Path, meta_steps: int) -> bool:
    progress = run_dir / "train_seconds.json"
    return (run_dir / "optimizer.lopt").is_file() and progress.is_file() and \
        json.loads(progress.read_text()).get("step") == meta_steps


def family_kwargs() -> Dict[str, Any]:
    """Returns the benchmark's task family arguments (configs/feature_lopt.py's)."""
    from meta_train import build as build_lib
    from meta_train import config as config_lib
    return build_lib.config_kwargs(config_lib.load_config(BASE_CONFIG).task.kwargs)


def evaluate_rows(exports: Dict[str, str], workdir: Path) -> Dict[str, Any]:
    """Evaluates every row's export and per-task tuned Adam on the held-out tasks; returns lopt-evaluate's summary."""
    from meta_train.evaluation import run as evaluation_run
    named = workdir / "exports"
    named.mkdir(exist_ok=True)
    sources = []
    for name, path in exports.items():  # lopt-evaluate labels an export by its file's stem
        link = named / f"{name}.lopt"
        link.unlink(missing_ok=True)
        link.symlink_to(Path(path).absolute())
        sources.append(str(link))
    setting = evaluation_run.Setting("cnn_digits_heldout", "cnn_image", family_kwargs(), EVAL_STEPS)
    spec = evaluation_run.Spec(optimizers=tuple(sources), settings=(setting,), baselines=("adam",), seeds=(0,),
                               num_tasks=EVAL_TASKS, valid_every=0)
    # one folder per set of rows: a rerun with other rows must not meet the earlier evaluation's arguments
    rows_digest = hashlib.sha256("\n".join(sorted(exports)).encode()).hexdigest()[:10]
    return evaluation_run.run_evaluation(spec, workdir / f"evaluation_{rows_digest}", show_progress=False,
                                         tensorboard="off")


def step_costs(exports: Dict[str, str], kwargs: Dict[str, Any], chunks: int = 7,
               chunk_steps: int = 20) -> Dict[str, Dict[str, float]]:
    """Returns each optimizer's median time of one jitted training step on one task of the cnn_image family built
    with `kwargs`, its ratio to Adam's (measured interleaved in the same process), and its state bytes per
    parameter."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import lopt
    import tasks
    from lopt import update_arguments

    family = tasks.get("cnn_image", **kwargs)
    task = family.task(family.sample(jax.random.key(0)))
    params = task.init(jax.random.key(1))
    batch = task.sample_batch(jax.random.key(2), "train")
    num_params = sum(x.size for x in jax.tree.leaves(params))
    adam = lopt.get("adam")
    optimizers = {"adam": (adam, adam.init(None))}
    for name, path in exports.items():
        loaded = lopt.load(path)
        optimizers[name] = (loaded.optimizer, loaded.meta_params)

    runners = {}
    for name, (optimizer, meta_params) in optimizers.items():
        tx = optimizer.transformation(meta_params, num_steps=EVAL_STEPS)

        def step(params, opt_state, key, optimizer=optimizer, tx=tx):
            loss, grads, kwargs = update_arguments.loss_gradient_and_update_args(
                optimizer, lambda p: task.loss(p, key, batch), params, probe_key=key,
                domain_features=task.domain_features)
            updates, opt_state = tx.update(grads, opt_state, params, **kwargs)
            return optax.apply_updates(params, updates), opt_state, loss

        state = tx.init(params)
        state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
        runners[name] = {"step": jax.jit(step), "params": params, "state": state,
                         "state_bytes_per_param": state_bytes / num_params}

    def run(runner, count):
        began = time.perf_counter()
        p, s = runner["params"], runner["state"]
        for k in range(count):
            p, s, loss = runner["step"](p, s, jax.random.key(k))
        loss.block_until_ready()
        runner["params"], runner["state"] = p, s
        return (time.perf_counter() - began) / count

    for runner in runners.values():
        run(runner, 3)  # compile and warm up
    times = {name: [] for name in runners}
    for _ in range(chunks):
        for name, runner in runners.items():
            times[name].append(run(runner, chunk_steps))
    adam_ms = 1e3 * float(np.median(times["adam"]))
    return {name: {"median_ms": 1e3 * float(np.median(times[name])),
                   "ratio_to_adam": 1e3 * float(np.median(times[name])) / adam_ms,
                   "state_bytes_per_param": runners[name]["state_bytes_per_param"], "num_params": num_params}
            for name in runners}


def table(rows: Dict[str, Any], adam: Dict[str, Any]) -> List[str]:
    """Returns the markdown table lines of the ablation."""
    lines = ["| row | change | final train loss (vs tuned Adam) | final valid loss (vs tuned Adam) | median speedup "
             f"| step cost vs Adam | step cost vs Adam, {WIDE_CHANNELS} CNN | state bytes / param | meta-training s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if "skipped" in row:
            lines.append(f"| {name} | `{row['change']}` | skipped: {row['skipped']} | | | | | | |")
            continue
        train, valid = row["final_train_loss"], row["final_valid_loss"]
        lines.append(
            f"| {name} | `{row['change']}` | {_loss(train, adam['final_train_loss'])} | "
            f"{_loss(valid, adam['final_valid_loss'])} | {row['median_speedup']:.2f}x | "
            f"{_cost(row['step_cost'])} | {_cost(row['wide_step_cost'])} | "
            f"{row['step_cost']['state_bytes_per_param']:.1f} | {row['meta_train_seconds']:.0f} |")
    lines.append(f"| tuned Adam | | {adam['final_train_loss']:.4f} | {adam['final_valid_loss']:.4f} | 1.00x | "
                 f"{_cost(adam['step_cost'])} | {_cost(adam['wide_step_cost'])} | "
                 f"{adam['step_cost']['state_bytes_per_param']:.1f} | |")
    return lines


def _cost(cost: Dict[str, float]) -> str:
    return f"{cost['ratio_to_adam']:.2f}x ({cost['median_ms']:.2f} ms)"


def _loss(value: Optional[float], reference: float) -> str:
    return "diverged" if value is None else f"{value:.4f} ({value / reference:.2f}x)"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Returns the benchmark's command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--meta-steps", type=int, default=300, help="meta-steps per row (the meta-lr decays over them)")
    p.add_argument("--num-tasks", type=int, default=4, help="tasks per meta-step (an even number: 2 host devices)")
    p.add_argument("--workdir", default="runs/features_ablation")
    p.add_argument("--out", default="benchmarks/features_ablation.json")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    """Meta-trains every available row, evaluates them side by side, measures step costs and writes the table."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    began = time.perf_counter()
    root = Path(args.workdir).absolute()
    rows: Dict[str, Dict[str, Any]] = {}
    for name in args.rows:
        row = ROWS[name]
        rows[name] = {"change": row.change.replace("\n", "; ")}
        if not available(row):
            rows[name]["skipped"] = f"this version has no {row.needs}"
            print(f"[{name}] skipped: {rows[name]['skipped']}", flush=True)
            continue
        rows[name].update(meta_train_row(name, root / name, args.meta_steps, args.num_tasks))
    exports = {name: row["export"] for name, row in rows.items() if "export" in row}
    evaluation = evaluate_rows(exports, root)
    entries = evaluation["settings"]["cnn_digits_heldout"]
    costs = step_costs(exports, family_kwargs())
    wide_costs = step_costs(exports, {**family_kwargs(), "channels": WIDE_CHANNELS})
    adam_entry = entries["adam (tuned lr)"]
    adam = {"final_train_loss": adam_entry["final_train_loss"]["mean"],
            "final_valid_loss": adam_entry["final_valid_loss"]["mean"], "step_cost": costs["adam"],
            "wide_step_cost": wide_costs["adam"]}
    for name in exports:
        entry = entries[name]
        rows[name].update({"final_train_loss": entry["final_train_loss"]["mean"],
                           "final_valid_loss": entry["final_valid_loss"]["mean"],
                           "num_nonfinite": entry["final_train_loss"]["num_nonfinite"],
                           "median_speedup": entry["speedup"]["median"], "step_cost": costs[name],
                           "wide_step_cost": wide_costs[name]})
    command = "python scripts/bench_features.py " + shlex.join(argv)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs visible, no GPU"
    date = datetime.date.today().isoformat()
    result = {"command": command, "meta_steps_per_row": args.meta_steps, "tasks_per_meta_step": args.num_tasks,
              "machine": machine, "date": date,
              "benchmark": {"config": "configs/feature_lopt.py", "family_kwargs": family_kwargs(),
                            "eval_tasks": EVAL_TASKS, "eval_steps": EVAL_STEPS, "wide_channels": WIDE_CHANNELS},
              "rows": rows, "tuned_adam": adam, "total_seconds": time.perf_counter() - began,
              "evaluation_table": evaluation["table"]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    markdown = [f"Command: `{command}` ({args.meta_steps} meta-steps of {args.num_tasks} tasks per row; {machine}; {date}; "
                f"{result['total_seconds'] / 60:.0f} min in all).", "", *table(rows, adam), ""]
    out.with_suffix(".md").write_text("\n".join(markdown))
    print("\n".join(markdown))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
