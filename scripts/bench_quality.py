"""Quality benchmark: meta-train small_fc_lopt with PES on 8x8 MLP classifiers within a wall-clock budget, then
evaluate it against per-task tuned Adam in distribution (held-out tasks) and out of distribution.

    python scripts/bench_quality.py --minutes 30 --workdir runs/bench_quality \\
        --data-dir /work/shared/data --out benchmarks/quality.json

Out of distribution: 4x wider hidden layers, 2x deeper, 5x the in-distribution horizon, and
another dataset. Targets: median speedup >= 3x over tuned Adam in distribution; out of
distribution, tuned Adam's final loss reached on every task and seed (worst speedup >= 1x).
Writes OUT (JSON) and OUT with a .md suffix (a summary for BENCHMARKS.md). Rerunning the same
command resumes both the meta-training (the time budget counts earlier invocations) and the
evaluation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import ml_collections

from meta_train import config as config_lib
from meta_train import run
from meta_train.evaluation import run as evaluation_run
from meta_train.files import write_text_atomic

ID_TARGET = 3.0


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Returns the benchmark's command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget for meta-training")
    p.add_argument("--workdir", required=True, help="folder for the meta-training run and the evaluation")
    p.add_argument("--data-dir", default=os.environ.get("LOPT_DATA_DIR", ""), help="folder with the datasets")
    p.add_argument("--out", default="benchmarks/quality.json", help="JSON result; the summary goes beside it as .md")
    p.add_argument("--dataset", default="fashion_mnist", help="meta-training dataset (digits needs no files)")
    p.add_argument("--ood-dataset", default="mnist", help="dataset of the out-of-distribution dataset setting")
    p.add_argument("--hidden", nargs="+", type=int, default=[32, 32], help="hidden widths of the meta-training MLPs")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--horizon-min", type=int, default=100, help="shortest inner run (log-uniform horizons)")
    p.add_argument("--horizon-max", type=int, default=500, help="longest inner run; equal to --horizon-min: constant")
    p.add_argument("--trunc-length", type=int, default=20)
    p.add_argument("--num-tasks", type=int, default=8, help="tasks per meta-step")
    p.add_argument("--std", type=float, default=0.01, help="PES perturbation standard deviation")
    p.add_argument("--meta-lr", type=float, default=1e-3)
    p.add_argument("--meta-lr-decay-steps", type=int, default=0, help="cosine decay length (0: constant rate)")
    p.add_argument("--meta-lr-final-fraction", type=float, default=0.1, help="rate after the decay, as a fraction")
    p.add_argument("--step-mult", type=float, default=1e-2)
    p.add_argument("--fraction-features", action="store_true",
                   help="small_fc_lopt also reads the fraction of the run done (t / num_steps)")
    p.add_argument("--time-scales", nargs="+", type=float, default=None,
                   help="small_fc_lopt's time-feature scales tanh(t / scale - 1) (default: lopt.features.TIME_SCALES)")
    p.add_argument("--baselines", nargs="+", default=["adam", "adam_cosine"],
                   help="hand-designed baselines, each tuned per task; adam is the speedup reference")
    p.add_argument("--host-devices", type=int, default=-1,
                   help="on a CPU host: split it into this many XLA devices and shard the tasks over them "
                        "(-1: one per core, as many as divide --num-tasks; 1: one device)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-steps", type=int, default=None, help="in-distribution inner steps (default --horizon-max)")
    p.add_argument("--eval-tasks", type=int, default=8, help="held-out tasks per setting")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="evaluation seeds")
    p.add_argument("--learning-rates", nargs="+", type=float, default=list(evaluation_run.DEFAULT_LEARNING_RATES))
    p.add_argument("--valid-every", type=int, default=10, help="validation loss every this many steps (0: off)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def meta_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    """Returns the meta-training config: small_fc_lopt, PES, mlp_image on `args.dataset` at 8x8."""
    config = config_lib.base_config()
    config.seed = args.seed
    config.data_dir = args.data_dir
    config.task.family = "mlp_image"
    config.task.kwargs = ml_collections.ConfigDict(
        {"dataset": args.dataset, "image_size": 8, "hidden": tuple(args.hidden), "batch_size": args.batch_size})
    config.optimizer.name = "small_fc_lopt"
    config.optimizer.kwargs = ml_collections.ConfigDict(
        {"hidden_sizes": (32, 32), "step_mult": args.step_mult, "exp_mult": 1e-3,
         "fraction_features": bool(args.fraction_features)})
    if args.time_scales:
        config.optimizer.kwargs.time_scales = tuple(args.time_scales)
    mt = config.meta_train
    mt.estimator.name = "pes"
    mt.num_tasks = args.num_tasks
    mt.estimator.kwargs = ml_collections.ConfigDict({"trunc_length": args.trunc_length, "std": args.std})
    if args.host_devices != 1:
        mt.parallel, mt.host_devices = "shard_map", args.host_devices
    if args.horizon_min == args.horizon_max:
        mt.horizon.name, mt.horizon.kwargs = "constant", ml_collections.ConfigDict({"length": args.horizon_max})
    else:
        mt.horizon.name = "log_uniform"
        mt.horizon.kwargs = ml_collections.ConfigDict({"low": args.horizon_min, "high": args.horizon_max})
    mt.meta_learning_rate = args.meta_lr
    if args.meta_lr_decay_steps:
        mt.meta_lr_schedule.name = "cosine"
        mt.meta_lr_schedule.kwargs = ml_collections.ConfigDict(
            {"decay_steps": args.meta_lr_decay_steps, "final_fraction": args.meta_lr_final_fraction})
    mt.num_steps = 10_000_000
    config.checkpoint.every = 200
    config.log_every = 20
    config.eval.enabled = False
    return config


def settings(args: argparse.Namespace) -> List[evaluation_run.Setting]:
    """Returns the in-distribution setting and the four out-of-distribution ones."""
    steps = args.eval_steps or args.horizon_max
    base = {"dataset": args.dataset, "image_size": 8, "hidden": list(args.hidden), "batch_size": args.batch_size}
    return [
        evaluation_run.Setting("in_distribution", "mlp_image", base, steps),
        evaluation_run.Setting("ood_4x_wider", "mlp_image", {**base, "hidden": [4 * h for h in args.hidden]}, steps),
        evaluation_run.Setting("ood_2x_deeper", "mlp_image", {**base, "hidden": list(args.hidden) * 2}, steps),
        evaluation_run.Setting("ood_5x_horizon", "mlp_image", base, 5 * steps),
        evaluation_run.Setting(f"ood_{args.ood_dataset}", "mlp_image", {**base, "dataset": args.ood_dataset}, steps),
    ]


def verdicts(evaluation: Dict[str, Any], learned: str) -> Dict[str, Any]:
    """Returns, per setting, the learned optimizer's speedup over tuned Adam and whether it meets its target."""
    out = {}
    for label, entries in evaluation["settings"].items():
        speedup = entries[learned]["speedup"]
        if label == "in_distribution":
            target, met = f"median speedup >= {ID_TARGET:g}x", speedup["median"] >= ID_TARGET
        else:
            target, met = "reaches tuned Adam's final loss on every run (worst >= 1x)", speedup["min"] >= 1.0
        out[label] = {"target": target, "met": bool(met), "median": speedup["median"], "worst": speedup["min"],
                      "reached": speedup["reached"], "runs": speedup["runs"],
                      "final_train_loss": entries[learned]["final_train_loss"]["mean"],
                      "adam_final_train_loss": entries["adam (tuned lr)"]["final_train_loss"]["mean"]}
        cosine = entries.get("adam_cosine (tuned lr)")
        if cosine is not None:
            out[label]["adam_cosine_median"] = cosine["speedup"]["median"]
            out[label]["adam_cosine_final_train_loss"] = cosine["final_train_loss"]["mean"]
    return out


def _x(value: float) -> str:
    return f"{value:.2f}x" if value > 0 else "not reached"


def summary_markdown(command: str, training: Dict[str, Any], checks: Dict[str, Any], table: str) -> str:
    """Returns the markdown summary to paste into BENCHMARKS.md."""
    lines = [
        "## Quality: small_fc_lopt meta-trained with PES vs per-task tuned Adam", "",
        f"Command: `{command}`", "",
        f"Machine: {training['machine']}. Meta-training: {training['meta_steps']} meta-steps in "
        f"{training['train_seconds'] / 60:.1f} min (budget {training['budget_minutes']:g} min, compile included), "
        f"last measured {training['inner_steps_per_s']:,.0f} inner steps/s.", "",
        "| setting | target | met | median speedup | worst | reached | final train loss (learned / tuned Adam) "
        "| tuned Adam+cosine: median speedup, final loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, check in checks.items():
        cosine = (f"{_x(check['adam_cosine_median'])}, {check['adam_cosine_final_train_loss']:.4g}"
                  if "adam_cosine_median" in check else "-")
        lines.append(
            f"| {label} | {check['target']} | {'yes' if check['met'] else 'no'} | {_x(check['median'])} | "
            f"{_x(check['worst'])} | {check['reached']}/{check['runs']} | "
            f"{check['final_train_loss']:.4g} / {check['adam_final_train_loss']:.4g} | {cosine} |")
    missed = [label for label, check in checks.items() if not check["met"]]
    if missed:
        notes = []
        for label in missed:
            check = checks[label]
            if label == "in_distribution":
                shortfall = f"{ID_TARGET / check['median']:.2f}x short" if check["median"] > 0 else "never reached"
                notes.append(f"{label}: median {_x(check['median'])}, {shortfall}")
            else:
                notes.append(f"{label}: tuned Adam's final loss not reached on {check['runs'] - check['reached']} "
                             f"of {check['runs']} runs (worst {_x(check['worst'])})")
        lines += ["", "Missed: " + "; ".join(notes) + "."]
    lines += ["", "<details><summary>Full evaluation tables</summary>", "", table.replace("# Evaluation", "").strip(),
              "", "</details>", ""]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Meta-trains within the budget, evaluates, and writes the JSON result and the markdown summary."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = "python scripts/bench_quality.py " + shlex.join(argv)
    workdir = Path(args.workdir)
    config = meta_config(args)
    trained = run.meta_train(config, workdir / "meta_train", show_progress=not args.no_progress,
                             max_seconds=args.minutes * 60)
    learned = "meta_trained"
    export = workdir / f"{learned}.lopt"
    shutil.copyfile(trained["export"], export)
    spec = evaluation_run.Spec(
        optimizers=(str(export),), settings=tuple(settings(args)), baselines=tuple(args.baselines),
        learning_rates=tuple(args.learning_rates), seeds=tuple(args.seeds), num_tasks=args.eval_tasks,
        task_seed=int(config.eval.seed), valid_every=args.valid_every, data_dir=args.data_dir)
    evaluation = evaluation_run.run_evaluation(
        spec, workdir / f"evaluation_{trained['meta_params_sha256'][:12]}", show_progress=not args.no_progress)
    lines = (workdir / "meta_train" / run.METRICS_FILE).read_text().splitlines()
    last_metrics = json.loads(lines[-1]) if lines else {}
    training = {
        "budget_minutes": args.minutes, "train_seconds": trained["train_seconds"], "meta_steps": trained["meta_steps"],
        "stopped_early": trained["stopped_early"], "compile_seconds": trained["compile_seconds"],
        "inner_steps_per_s": float(last_metrics.get("inner_steps_per_s", float("nan"))),
        "last_metrics": last_metrics, "config": json.loads(config.to_json_best_effort()),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs visible".replace("  ", " "),
    }
    checks = verdicts(evaluation, learned)
    result = {"command": command, "training": training, "targets": checks,
              "settings": [dataclasses.asdict(setting) for setting in spec.settings], "evaluation": evaluation}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=1))
    markdown = summary_markdown(command, training, checks, evaluation["table"])
    write_text_atomic(out.with_suffix(".md"), markdown)
    print(markdown)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
