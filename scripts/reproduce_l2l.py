"""Reproduce L2L's headline: a coordinatewise LSTM meta-trained on 10-d quadratics beats tuned Adam at 100 steps.

Meta-trains `l2l_lstm` with truncated backprop (truncations of 20 steps over 100-step inner runs)
on L2L's family f(x) = ||W x - y||^2 (W, y standard normal), then trains held-out quadratics for
100 steps with the trained LSTM and with Adam whose learning rate is tuned over a log grid,
both per task (an oracle, picked on each task's own final loss) and once for all tasks.

    python scripts/reproduce_l2l.py --out runs/l2l.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
import optax

import lopt
import meta_train
import tasks
from meta_train.evaluation import curves as evaluate
from meta_train.evaluation import speedup
from meta_train.truncated_backprop import TruncatedBackprop

LEARNING_RATES = tuple(float(x) for x in np.logspace(-3, 0.5, 15))
HORIZON = 100


def parse_args() -> argparse.Namespace:
    """Returns the command-line settings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for the figures and curves")
    parser.add_argument("--meta-steps", type=int, default=3000)
    parser.add_argument("--num-tasks", type=int, default=64, help="tasks per meta-step")
    parser.add_argument("--trunc-length", type=int, default=20)
    parser.add_argument("--meta-lr", type=float, default=3e-3)
    parser.add_argument("--eval-tasks", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def meta_train_lstm(args: argparse.Namespace, family: tasks.TaskFamily, optimizer: lopt.L2LLSTM):
    """Meta-trains the LSTM with truncated backprop and Adam (cosine decay to 0.1x); returns (meta-params, meta-losses)."""
    schedule = optax.cosine_decay_schedule(args.meta_lr, args.meta_steps, alpha=0.1)
    trainer = meta_train.Trainer(
        family, optimizer,
        estimator=TruncatedBackprop(num_tasks=args.num_tasks, trunc_length=args.trunc_length),
        horizon=meta_train.ConstantHorizon(HORIZON),
        meta_optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule)),
    )
    state = trainer.init(jax.random.key(args.seed))
    losses = []
    for step in range(args.meta_steps):
        state, metrics = trainer.step(state)
        losses.append(float(metrics["meta_loss"]))
        if (step + 1) % max(1, args.meta_steps // 10) == 0:
            print(f"meta-step {step + 1}: meta-loss {np.mean(losses[-100:]):.4f}", flush=True)
    return state.meta_params, losses


def summary(final: np.ndarray, curves: np.ndarray) -> dict:
    """Returns headline statistics of normalised final losses [tasks] and curves [tasks, steps]."""
    return {
        "mean_final": float(np.mean(final)),
        "median_final": float(np.median(final)),
        "geometric_mean_final": speedup.geometric_mean(np.maximum(final, 1e-30)),
        "mean_curve_at": {str(s): float(np.mean(curves[:, s - 1])) for s in (10, 25, 50, 100)},
    }


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Returns the mean of a - b over tasks and its standard error (paired: same tasks)."""
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return {"mean": float(np.mean(diff)), "standard_error": float(np.std(diff, ddof=1) / np.sqrt(diff.size))}


def main() -> None:
    """Meta-trains, evaluates against tuned Adam, prints a table and writes JSON to --out."""
    args = parse_args()
    start = time.time()
    family = tasks.get("l2l_quadratic", dim=10)
    optimizer = lopt.L2LLSTM()
    theta, meta_losses = meta_train_lstm(args, family, optimizer)
    train_seconds = time.time() - start

    keys = evaluate.held_out_task_keys(args.seed + 10_000, args.eval_tasks)
    normalize = jax.vmap(lambda k, loss: family.task(family.sample(jax.random.split(k, 4)[0])).normalizer(loss))

    def normalized(curves: evaluate.Curves):
        per_task = jax.vmap(lambda k, c: normalize(jax.numpy.broadcast_to(k, (c.shape[0],)), c))
        losses = np.asarray(per_task(keys, curves.train_losses))
        return curves.final_normalized, losses

    lstm_final, lstm_curves = normalized(evaluate.train_curves(family, optimizer, theta, keys, HORIZON, final_batches=1))
    untrained = optimizer.init(jax.random.key(args.seed))
    init_final, _ = normalized(evaluate.train_curves(family, optimizer, untrained, keys, HORIZON, final_batches=1))
    adam = lopt.get("adam")
    tuned = evaluate.tuned_baseline_curves(family, adam, LEARNING_RATES, keys, HORIZON, final_batches=1)
    oracle_final, oracle_curves = normalized(tuned["curves"])
    grid = jax.tree.map(lambda *xs: jax.numpy.stack(xs), *[adam.with_learning_rate(None, lr) for lr in LEARNING_RATES])
    per_rate = evaluate.grid_curves(family, adam, grid, keys, HORIZON, final_batches=1)
    per_rate_final = np.where(np.isfinite(per_rate.final_normalized), per_rate.final_normalized, np.inf)
    best_rate = int(np.argmin(np.mean(np.log(np.maximum(per_rate_final, 1e-30)), axis=1)))
    global_final, global_curves = normalized(evaluate.Curves(*(x[best_rate] for x in per_rate)))

    results = {
        "setup": {
            "family": "l2l_quadratic(dim=10): ||W x - y||^2, W and y ~ N(0, 1), x0 ~ N(0, 0.01^2)",
            "optimizer": repr(optimizer), "estimator": f"TruncatedBackprop(num_tasks={args.num_tasks}, trunc_length={args.trunc_length})",
            "horizon": HORIZON, "meta_steps": args.meta_steps, "meta_lr": f"{args.meta_lr} cosine-decayed to 0.1x", "eval_tasks": args.eval_tasks,
            "learning_rates": LEARNING_RATES, "seed": args.seed, "meta_train_seconds": round(train_seconds, 1),
            "total_seconds": None,
        },
        "lstm": summary(lstm_final, lstm_curves),
        "lstm_untrained": {"mean_final": float(np.mean(init_final)), "median_final": float(np.median(init_final))},
        "adam_tuned_per_task": {**summary(oracle_final, oracle_curves), "num_at_grid_edge": tuned["num_at_grid_edge"]},
        "adam_tuned_globally": {**summary(global_final, global_curves), "learning_rate": LEARNING_RATES[best_rate]},
        "lstm_minus_adam_per_task_mean_final": paired(lstm_final, oracle_final),
        "lstm_minus_adam_global_mean_final": paired(lstm_final, global_final),
        "final_per_task": {"lstm": lstm_final.tolist(), "adam_per_task": oracle_final.tolist(),
                           "adam_global": global_final.tolist()},
        "lstm_beats_per_task_adam_fraction": float(np.mean(lstm_final < oracle_final)),
        "lstm_beats_global_adam_fraction": float(np.mean(lstm_final < global_final)),
        "mean_curves": {"lstm": np.mean(lstm_curves, 0).tolist(), "adam_per_task": np.mean(oracle_curves, 0).tolist(),
                        "adam_global": np.mean(global_curves, 0).tolist()},
        "meta_losses": meta_losses,
    }
    results["setup"]["total_seconds"] = round(time.time() - start, 1)
    print(f"\n{'normalised loss, held-out tasks':34s} {'mean@100':>9s} {'median@100':>11s} {'geomean@100':>12s} {'mean@25':>9s}")
    for label, key in (("L2L LSTM (meta-trained)", "lstm"), ("Adam, lr tuned per task", "adam_tuned_per_task"),
                       (f"Adam, one lr ({LEARNING_RATES[best_rate]:.3g})", "adam_tuned_globally")):
        r = results[key]
        print(f"{label:34s} {r['mean_final']:9.4f} {r['median_final']:11.4f} {r['geometric_mean_final']:12.3g} {r['mean_curve_at']['25']:9.4f}")
    print(f"LSTM untrained: mean@100 {results['lstm_untrained']['mean_final']:.4f}")
    for label, key in (("per-task", "lstm_minus_adam_per_task_mean_final"), ("one-lr", "lstm_minus_adam_global_mean_final")):
        print(f"mean@100 LSTM - {label} Adam: {results[key]['mean']:+.4f} +- {results[key]['standard_error']:.4f} (s.e.)")
    print(f"LSTM below per-task-tuned Adam on {100 * results['lstm_beats_per_task_adam_fraction']:.0f}% of tasks, "
          f"below one-lr Adam on {100 * results['lstm_beats_global_adam_fraction']:.0f}%; "
          f"meta-training {train_seconds:.0f} s, total {results['setup']['total_seconds']:.0f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
