"""Benchmark: one jitted training step (loss, grad, optimizer update) of a ReLU MLP or CNN with each learned optimizer vs Adam.

Prints per-step medians and the ratio learned / Adam measured side by side in one run, plus
optimizer-state bytes per parameter, and writes everything to a JSON file.

    python scripts/bench_step.py --out benchmarks/step_all_optimizers_cpu.json
    python scripts/bench_step.py --models wide_cnn --optimizers small_fc_lopt conv_lopt --out benchmarks/step_conv_lopt_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lopt
from tasks.cnn_image import apply_cnn, conv_shapes, init_cnn

MODELS = {"small": (64, 32, 32, 10), "wide": (3072, 128, 128, 10)}
# CNNs: (image size, image channels, conv channels, classes); 3x3 HWIO kernels, stride 1, ReLU, no pooling, then the
# feature map averaged over space and a dense head (tasks.cnn_image's network), batch 32.
CNN_MODELS = {"wide_cnn": (8, 3, (64, 128, 128), 10)}
CNN_BATCH = 32


def init_mlp(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return {
        f"layer_{i}": {"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros((b,))}
        for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:]))
    }


def mlp_loss(params, x, y):
    h = x
    for i in range(len(params)):
        h = h @ params[f"layer_{i}"]["w"] + params[f"layer_{i}"]["b"]
        if i < len(params) - 1:
            h = jax.nn.relu(h)
    return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()


DOT_FUSION_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def cnn_loss(params, x, y):
    logits = apply_cnn(params, x, jnp.zeros((), jnp.int32), ("relu",), "none")
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_step(tx, compiler_options=None, loss_fn=mlp_loss):
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1), compiler_options=compiler_options)


def tree_bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


class Runner:
    """One optimizer on one model: a jitted step and its live state."""

    def __init__(self, optimizer, sizes, x, y, compiler_options=None, model=None):
        tx = optimizer.transformation(optimizer.init(jax.random.key(0)), num_steps=10_000)
        if model in CNN_MODELS:
            image_size, image_channels, channels, classes = CNN_MODELS[model]
            shapes = conv_shapes(image_channels, channels, (3,) * len(channels))
            self.params, loss_fn = init_cnn(jax.random.key(1), shapes, classes, 1.0), cnn_loss
        else:
            self.params, loss_fn = init_mlp(jax.random.key(1), sizes), mlp_loss
        self.num_params = sum(p.size for p in jax.tree.leaves(self.params))
        self.opt_state = jax.tree.map(lambda x: jnp.array(x, copy=True), tx.init(self.params))  # donation needs distinct buffers
        self.state_bytes_per_param = tree_bytes(self.opt_state) / self.num_params
        self.step = make_step(tx, compiler_options, loss_fn)
        self.x, self.y = x, y
        began = time.perf_counter()
        self.run(1)
        self.compile_seconds = time.perf_counter() - began
        self.run(20)

    def run(self, num_steps: int) -> float:
        began = time.perf_counter()
        for _ in range(num_steps):
            self.params, self.opt_state, loss = self.step(self.params, self.opt_state, self.x, self.y)
        loss.block_until_ready()
        return time.perf_counter() - began


def benchmark(names, model: str, chunks: int, chunk_steps: int, dot_fusion: bool = False, mlp_chunks=()):
    key = jax.random.key(2)
    if model in CNN_MODELS:
        image_size, image_channels, _, classes = sizes = CNN_MODELS[model]
        x = jax.random.normal(key, (CNN_BATCH, image_size, image_size, image_channels))
        y = jax.random.randint(key, (CNN_BATCH,), 0, classes)
    else:
        sizes = MODELS[model]
        x = jax.random.normal(key, (128, sizes[0]))
        y = jax.random.randint(key, (128,), 0, sizes[-1])
    runners = {name: Runner(lopt.get(name), sizes, x, y, model=model) for name in ["adam", *names]}
    runners.update({f"mlp+chunks{n}": Runner(lopt.get("small_fc_lopt", concurrent_chunks=n), sizes, x, y, model=model)
                    for n in mlp_chunks})
    if dot_fusion:
        runners.update({f"{name}+dotfusion": Runner(lopt.get(name), sizes, x, y, DOT_FUSION_OPTIONS, model)
                        for name in ["adam", *names]})
    times = {name: [] for name in runners}
    for _ in range(chunks):
        for name, runner in runners.items():
            times[name].append(runner.run(chunk_steps) / chunk_steps)
    adam_ms = 1e3 * float(np.median(times["adam"]))
    results = {}
    for name, runner in runners.items():
        median_ms = 1e3 * float(np.median(times[name]))
        results[name] = {
            "median_ms": median_ms,
            "ratio_to_adam": median_ms / adam_ms,
            "state_bytes_per_param": runner.state_bytes_per_param,
            "compile_seconds": runner.compile_seconds,
            "num_params": runner.num_params,
            "steps_timed": chunks * chunk_steps,
        }
    return results


def learned_optimizer_names():
    """Registered optimizers that are not hand-designed baselines."""
    return [n for n in lopt.registered_names() if not isinstance(lopt.get(n), lopt.HandDesigned)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="*", default=None, help="default: every learned optimizer")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=[*MODELS, *CNN_MODELS],
                        help=f"default: the MLPs {', '.join(MODELS)}; CNNs: {', '.join(CNN_MODELS)}")
    parser.add_argument("--chunks", type=int, default=30)
    parser.add_argument("--chunk-steps", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/step.json")
    parser.add_argument("--dot-fusion", action="store_true",
                        help="also time every optimizer with XLA:CPU fusing dots with their elementwise neighbours")
    parser.add_argument("--mlp-chunks", nargs="*", type=int, default=[2],
                        help="also time small_fc_lopt with these concurrent_chunks values (runner 'mlp+chunksN')")
    args = parser.parse_args()
    names = args.optimizers if args.optimizers is not None else learned_optimizer_names()
    report = {"device": str(jax.devices()[0]), "backend": jax.default_backend(), "machine": platform.processor() or platform.machine(),
              "cpu_count": __import__("os").cpu_count(), "jax": jax.__version__, "models": {}}
    for model in args.models:
        results = benchmark(names, model, args.chunks, args.chunk_steps, args.dot_fusion, args.mlp_chunks)
        report["models"][model] = results
        shape = f"CNN {CNN_MODELS[model]}" if model in CNN_MODELS else f"MLP {MODELS[model]}"
        batch = CNN_BATCH if model in CNN_MODELS else 128
        print(f"\n{model} {shape} ({results['adam']['num_params']:,} params), batch {batch}, "
              f"median of {args.chunks} chunks x {args.chunk_steps} steps")
        print(f"{'optimizer':<18}{'ms/step':>10}{'x Adam':>9}{'state B/param':>15}{'compile s':>11}")
        for name, r in results.items():
            print(f"{name:<18}{r['median_ms']:>10.4f}{r['ratio_to_adam']:>9.2f}{r['state_bytes_per_param']:>15.1f}"
                  f"{r['compile_seconds']:>11.2f}")
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
