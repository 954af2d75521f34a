"""How much faster per-task tuned warmup-cosine Adam gets to tuned constant Adam's final loss.

    python scripts/bench_schedule_ceiling.py --data-dir /work/shared/data --out benchmarks/schedule_ceiling.json

The quality benchmark asks a learned optimizer for a speedup over constant-learning-rate Adam
whose rate is tuned per task. This measures what the strongest cheap hand-designed answer, a
per-task tuned warmup + cosine schedule fitted to each shorter budget, reaches on the same
held-out tasks: for each budget fraction f, the mean final training loss of Adam+cosine run
for f * steps, against constant Adam's at the full budget. The largest 1 / f whose loss is at
or below the reference is the schedule's budget ratio on this problem. It is not the project's
speedup (meta_train.evaluation.speedup, measured along one run's curve): a schedule fitted to a
shorter budget is a different run, so this counts budgets, not steps along a curve.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

import lopt
import tasks
from meta_train.evaluation import curves as evaluate
from meta_train.files import write_text_atomic

LEARNING_RATES = tuple(float(10.0**x) for x in np.arange(-3.0, -0.49, 0.25))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Returns the benchmark's command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("LOPT_DATA_DIR", ""), help="folder with the datasets")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--hidden", nargs="+", type=int, default=[32, 32])
    p.add_argument("--steps", type=int, default=300, help="constant Adam's budget (the reference)")
    p.add_argument("--fractions", nargs="+", type=float, default=[1.0, 2 / 3, 0.5, 1 / 3],
                   help="budgets of Adam+cosine, as fractions of --steps")
    p.add_argument("--num-tasks", type=int, default=8)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--task-seed", type=int, default=10_000, help="held-out task stream (the evaluations' default)")
    p.add_argument("--out", default="benchmarks/schedule_ceiling.json")
    return p.parse_args(argv)


def tuned_final_loss(family: Any, optimizer: Any, task_keys: Any, num_steps: int, seeds: Sequence[int],
                     learning_rates: Sequence[float]) -> Dict[str, Any]:
    """Returns the mean over tasks of the final training loss at each task's best learning rate (mean over seeds)."""
    grid = evaluate.learning_rate_grid(optimizer, learning_rates)
    finals = np.stack([evaluate.grid_curves(family, optimizer, grid, task_keys, num_steps, seed=seed).final_losses
                       for seed in seeds])
    best = evaluate.best_rate_per_task(finals)
    per_task = np.mean(finals, axis=0)[best, np.arange(best.shape[0])]
    return {"final_train_loss": float(np.mean(per_task)), "per_task": per_task.tolist(),
            "learning_rates": [learning_rates[i] for i in best],
            "num_at_grid_edge": int(np.sum((best == 0) | (best == len(learning_rates) - 1)))}


def main(argv: Optional[List[str]] = None) -> int:
    """Measures the reference and every Adam+cosine budget, prints a table and writes the JSON."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not all(0.0 < f <= 1.0 for f in args.fractions):
        raise ValueError(f"--fractions must lie in (0, 1], got {args.fractions}")
    family = tasks.get("mlp_image", dataset=args.dataset, image_size=8, hidden=tuple(args.hidden),
                       data_dir=args.data_dir or None)
    task_keys = evaluate.held_out_task_keys(args.task_seed, args.num_tasks)
    began = time.perf_counter()
    reference = tuned_final_loss(family, lopt.get("adam"), task_keys, args.steps, args.seeds, LEARNING_RATES)
    print(f"tuned constant Adam, {args.steps} steps: final train loss {reference['final_train_loss']:.4f}")
    print("| Adam+cosine budget | steps | final train loss | at or below constant Adam's | budget ratio if so |")
    print("|---|---|---|---|---|")
    rows = []
    for fraction in args.fractions:
        steps = max(1, int(round(fraction * args.steps)))
        result = tuned_final_loss(family, lopt.get("adam_cosine"), task_keys, steps, args.seeds, LEARNING_RATES)
        reached = result["final_train_loss"] <= reference["final_train_loss"]
        rows.append({"fraction": fraction, "steps": steps, "reached": reached, **result})
        print(f"| {fraction:.3g} | {steps} | {result['final_train_loss']:.4f} | {'yes' if reached else 'no'} | "
              f"{args.steps / steps if reached else float('nan'):.2f}x |")
    ceiling = max([args.steps / row["steps"] for row in rows if row["reached"]], default=0.0)
    print(f"largest budget ratio of tuned Adam+cosine over tuned constant Adam: {ceiling:.2f}x")
    result = {"command": "python scripts/bench_schedule_ceiling.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": f"{platform.machine()} {os.cpu_count()} CPUs visible", "seconds": time.perf_counter() - began,
              "dataset": args.dataset, "hidden": args.hidden, "steps": args.steps, "seeds": args.seeds,
              "learning_rates": list(LEARNING_RATES), "reference": reference, "adam_cosine": rows,
              "largest_budget_ratio_measured": ceiling}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
