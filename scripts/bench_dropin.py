"""Learned optimizers as drop-ins in plain JAX/optax training loops that are none of the project's tasks.

    python scripts/bench_dropin.py --export runs/generalist/optimizer.lopt --export celo.lopt \
        --data-dir /path/to/data --out benchmarks/dropin.json

What a new user does with an exported optimizer: write a model and a loss with nothing but
jax.numpy, take `lopt.load(path).transformation(num_steps=...)`, and train. Each problem is
trained by every export and by Adam with its learning rate tuned over a 7-point log grid
(3.2e-4..0.32, half a decade apart, by final training loss, on the same seeds); the figure of merit is the final
training loss (mean of the last 5% of steps, mean over seeds) divided by tuned Adam's. Problems:

- `digits_mlp`: scikit-learn digits, 64-32-10 tanh MLP, minibatch 128, 300 steps;
- `digits_mlp_wide`: the same with 512-512 hidden ReLU layers (a larger MLP), 1,000 steps;
- `digits_mlp_deep_long`: 8 hidden ReLU layers of 64, 5,000 steps (a long horizon);
- `mnist_mlp`: MNIST 28x28, 784-256-10 ReLU, minibatch 128, 1,000 steps (needs --data-dir);
- `breast_cancer_logreg`: full-batch logistic regression on standardised breast_cancer features,
  500 steps (a small convex problem).

An export that takes a learning rate (the Celo2 rule: a learned direction the user scales) is
also run with its learning rate tuned over the same grid, as row `NAME (lr tuned)`. Writes the
JSON (per problem and optimizer: final losses, ratios, tuned learning rates) and a PNG of the
curves beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt

ADAM_LEARNING_RATES = tuple(float(x) for x in np.logspace(-3.5, -0.5, 7))


class Problem(NamedTuple):
    """A plain training problem: init(key) -> params, loss(params, x, y), data arrays and a budget."""

    name: str
    init: Callable[[jax.Array], Any]
    loss: Callable[[Any, jax.Array, jax.Array], jax.Array]
    x: np.ndarray
    y: np.ndarray
    num_steps: int
    batch_size: Optional[int]


def mlp_problem(name: str, x: np.ndarray, y: np.ndarray, hidden: Sequence[int], activation: Callable,
                num_steps: int, batch_size: int) -> Problem:
    """Returns a softmax-regression MLP problem with LeCun-normal weights and zero biases."""
    sizes = (x.shape[1], *hidden, int(y.max()) + 1)

    def init(key):
        keys = jax.random.split(key, len(sizes) - 1)
        return [{"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros((b,))}
                for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

    def loss(params, xb, yb):
        h = xb
        for layer in params[:-1]:
            h = activation(h @ layer["w"] + layer["b"])
        logits = h @ params[-1]["w"] + params[-1]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    return Problem(name, init, loss, x, y, num_steps, batch_size)


def logistic_problem(x: np.ndarray, y: np.ndarray, num_steps: int) -> Problem:
    """Returns full-batch binary logistic regression (weights and bias start at zero)."""

    def init(key):
        del key
        return {"w": jnp.zeros((x.shape[1],)), "b": jnp.zeros(())}

    def loss(params, xb, yb):
        logits = xb @ params["w"] + params["b"]
        return optax.sigmoid_binary_cross_entropy(logits, yb.astype(jnp.float32)).mean()

    return Problem("breast_cancer_logreg", init, loss, x, y, num_steps, None)


def standardise(x: np.ndarray) -> np.ndarray:
    """Returns features scaled to zero mean and unit variance per column."""
    return ((x - x.mean(0)) / (x.std(0) + 1e-8)).astype(np.float32)


def read_mnist(data_dir: str) -> Optional[tuple]:
    """Returns MNIST's training images (flattened, in [0, 1]) and labels, or None when the files are absent."""
    import gzip

    folder = Path(data_dir) / "mnist" if data_dir else None
    if folder is None or not (folder / "train-images-idx3-ubyte.gz").exists():
        return None
    with gzip.open(folder / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return (images.astype(np.float32) / 255.0, labels.astype(np.int32))


def problems(data_dir: str, budget_scale: float) -> List[Problem]:
    """Returns the benchmark's problems (MNIST only when its files are in `data_dir`)."""
    from sklearn.datasets import load_breast_cancer, load_digits

    steps = lambda n: max(10, int(round(n * budget_scale)))
    digits = load_digits()
    dx, dy = (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int32)
    cancer = load_breast_cancer()
    out = [
        mlp_problem("digits_mlp", dx, dy, (32,), jnp.tanh, steps(300), 128),
        mlp_problem("digits_mlp_wide", dx, dy, (512, 512), jax.nn.relu, steps(1000), 128),
        mlp_problem("digits_mlp_deep_long", dx, dy, (64,) * 8, jax.nn.relu, steps(5000), 128),
        logistic_problem(standardise(cancer.data), cancer.target.astype(np.int32), steps(500)),
    ]
    mnist = read_mnist(data_dir)
    if mnist is not None:
        out.insert(3, mlp_problem("mnist_mlp", *mnist, (256,), jax.nn.relu, steps(1000), 128))
    return out


def train_curve(problem: Problem, tx: optax.GradientTransformation, seed: int) -> np.ndarray:
    """Returns the training loss at every step of one run of `tx` on `problem` (one jitted scan)."""
    x, y = jnp.asarray(problem.x), jnp.asarray(problem.y)
    init_key, data_key = jax.random.split(jax.random.key(seed))

    def step(carry, key):
        params, opt_state = carry
        if problem.batch_size is None:
            xb, yb = x, y
        else:
            index = jax.random.randint(key, (problem.batch_size,), 0, x.shape[0])
            xb, yb = x[index], y[index]
        loss, grads = jax.value_and_grad(problem.loss)(params, xb, yb)
        updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def run():
        params = problem.init(init_key)
        keys = jax.random.split(data_key, problem.num_steps)
        return jax.lax.scan(step, (params, tx.init(params)), keys)[1]

    return np.asarray(run())


def final_loss(curve: np.ndarray) -> float:
    """Returns the mean of the last 5% of a loss curve (inf when any of it is not finite)."""
    tail = curve[-max(1, len(curve) // 20):]
    return float(np.mean(tail)) if np.all(np.isfinite(tail)) else float("inf")


def with_loss_argument(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps a plain optax transformation so it accepts (and ignores) `loss=`."""
    return optax.with_extra_args_support(tx)


def tunable(loaded: Any) -> bool:
    """Returns whether an exported optimizer takes a learning rate (a learned direction the user scales)."""
    return "learning_rate" in loaded.config


def tuned_curves(problem: Problem, make_tx: Callable[[float], Any], seeds: Sequence[int]) -> tuple:
    """Returns (best learning rate, its mean final loss, its mean curve) over ADAM_LEARNING_RATES."""
    grid = {}
    for rate in ADAM_LEARNING_RATES:
        curves = [train_curve(problem, make_tx(rate), s) for s in seeds]
        grid[rate] = (float(np.mean([final_loss(c) for c in curves])), np.mean(curves, axis=0))
    best = min(grid, key=lambda r: grid[r][0])
    return best, grid[best][0], grid[best][1]


def evaluate_problem(problem: Problem, exports: Dict[str, Any], seeds: Sequence[int]) -> Dict[str, Any]:
    """Runs tuned Adam (grid) and every export on `problem`; returns per-optimizer curves and final losses.

    Exports that take a learning rate run twice: with their stored settings, and with the learning
    rate tuned over the same grid as Adam (row `NAME (lr tuned)`).
    """
    best_rate, reference, reference_curve = tuned_curves(
        problem, lambda rate: with_loss_argument(optax.adam(rate)), seeds)
    result = {"num_steps": problem.num_steps, "tuned_adam": {"learning_rate": best_rate, "final_loss": reference,
              "at_grid_edge": best_rate in (ADAM_LEARNING_RATES[0], ADAM_LEARNING_RATES[-1])},
              "optimizers": {}, "curves": {"tuned adam": reference_curve}}
    for name, loaded in exports.items():
        tx = loaded.transformation(num_steps=problem.num_steps)
        curves = [train_curve(problem, tx, s) for s in seeds]
        final = float(np.mean([final_loss(c) for c in curves]))
        result["optimizers"][name] = {"final_loss": final, "ratio_to_tuned_adam": final / reference}
        result["curves"][name] = np.mean(curves, axis=0)
        if tunable(loaded):
            rebuilt = lambda rate: type(loaded.optimizer)(**{**loaded.config, "learning_rate": rate}).transformation(
                loaded.meta_params, num_steps=problem.num_steps)
            rate, final, curve = tuned_curves(problem, rebuilt, seeds)
            result["optimizers"][f"{name} (lr tuned)"] = {"final_loss": final, "ratio_to_tuned_adam": final / reference,
                                                           "learning_rate": rate}
            result["curves"][f"{name} (lr tuned)"] = curve
    return result


def plot(results: Dict[str, Dict[str, Any]], path: Path) -> None:
    """Saves one panel per problem: mean training loss against step for tuned Adam and every export."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(4.6 * len(results), 3.8), squeeze=False)
    for axis, (name, result) in zip(axes[0], results.items()):
        for label, curve in result["curves"].items():
            finite = np.where(np.isfinite(curve), curve, np.nan)
            window = max(1, len(curve) // 100)
            smooth = np.convolve(finite, np.ones(window) / window, mode="valid")
            axis.plot(np.arange(window, len(curve) + 1), smooth, label=label, linewidth=1.2)
        axis.set_yscale("log")
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("step")
        axis.legend(fontsize=7)
    axes[0, 0].set_ylabel("training loss (running mean)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Returns the benchmark's command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", action="append", default=[], metavar="NAME=FILE|FILE",
                   help="an exported optimizer (repeatable); NAME= labels it, a pretrained name works too")
    p.add_argument("--data-dir", default=os.environ.get("LOPT_DATA_DIR", ""), help="folder with mnist/ (optional)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every problem's step budget")
    p.add_argument("--problems", nargs="*", default=None, help="run only these problems")
    p.add_argument("--out", default="benchmarks/dropin.json")
    return p.parse_args(argv)


def load_export(spec: str) -> tuple:
    """Returns (label, loaded optimizer) for `NAME=FILE`, `FILE` or a pretrained optimizer's name."""
    label, _, path = spec.rpartition("=")
    if not Path(path).exists() and path in lopt.pretrained.list():
        return label or path, lopt.pretrained.load(path)
    return label or Path(path).stem, lopt.load(path)


def main(argv: Optional[List[str]] = None) -> None:
    """Runs every problem, prints the ratio table and writes the JSON and PNG."""
    args = parse_args(argv)
    if not args.export:
        raise SystemExit("error: give at least one --export FILE")
    try:
        exports = dict(load_export(spec) for spec in args.export)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}")
    chosen = problems(args.data_dir, args.budget_scale)
    if args.problems:
        unknown = sorted(set(args.problems) - {p.name for p in chosen})
        if unknown:
            raise SystemExit(f"error: unknown problem(s) {', '.join(unknown)}; known: {', '.join(p.name for p in chosen)}")
        chosen = [p for p in chosen if p.name in args.problems]
    results, began = {}, time.time()
    for problem in chosen:
        results[problem.name] = evaluate_problem(problem, exports, args.seeds)
        row = results[problem.name]
        ratios = "  ".join(f"{n} {r['ratio_to_tuned_adam']:.3f}x" for n, r in row["optimizers"].items())
        print(f"{problem.name:24s} tuned adam lr {row['tuned_adam']['learning_rate']:.1e} loss "
              f"{row['tuned_adam']['final_loss']:.4g}   final loss / tuned adam: {ratios}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(results, out.with_suffix(".png"))
    for row in results.values():
        del row["curves"]
    out.write_text(json.dumps({
        "command": "python scripts/bench_dropin.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seeds": args.seeds, "budget_scale": args.budget_scale, "adam_learning_rates": ADAM_LEARNING_RATES,
        "problems": results, "seconds": time.time() - began, "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__,
    }, indent=2))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
