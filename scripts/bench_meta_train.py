"""Benchmark: PES meta-training throughput of small_fc_lopt on the small digits MLP (8x8 -> 32 -> 32 -> 10).

8 tasks, antithetic pairs, truncation 20, horizon 200 by default. Reports inner steps per
second (tasks x 2 x truncation per meta-step) and the compile time of the first meta-step
for each task-map choice (and device count), measured side by side in one run, as JSON.

    python scripts/bench_meta_train.py --out benchmarks/meta_train_cpu.json
    python scripts/bench_meta_train.py --devices 1 2 4 --task-maps vmap   # forced host devices on CPU
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task-maps", nargs="*", default=["vmap", "map"])
    parser.add_argument("--devices", nargs="*", type=int, default=[1], help="device counts (shard_map when > 1)")
    parser.add_argument("--num-tasks", type=int, default=8)
    parser.add_argument("--trunc-length", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--meta-steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--optimizer", default="mlp")
    parser.add_argument("--concurrent-chunks", nargs="*", type=int, default=[None],
                        help="mlp only: values of small_fc_lopt's concurrent_chunks to compare (default: its own)")
    parser.add_argument("--out", default="benchmarks/meta_train.json")
    return parser.parse_args(argv)


ARGS = parse_args()
from meta_train.parallel import force_host_devices  # noqa: E402  (imports jax; its backend starts later)

if max(ARGS.devices) > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    force_host_devices(max(ARGS.devices))

import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import lopt  # noqa: E402
import meta_train  # noqa: E402
import tasks  # noqa: E402


def build(task_map: str, devices: int, chunks, args) -> meta_train.Trainer:
    family = tasks.get("mlp_image", dataset="digits", hidden=(32, 32), batch_size=128, activations=("relu",))
    parallelism = meta_train.TaskParallelism("shard_map" if devices > 1 else "none", devices)
    return meta_train.Trainer(
        family, lopt.get(args.optimizer, **({} if chunks is None else {"concurrent_chunks": chunks})),
        meta_train.PES(args.num_tasks, args.trunc_length, 0.01, task_map=task_map),
        meta_train.ConstantHorizon(args.horizon), optax.adam(1e-3), parallelism=parallelism,
    )


def measure(trainer: meta_train.Trainer, args):
    began = time.perf_counter()
    state = trainer.init(jax.random.key(0))
    jax.block_until_ready(state)
    init_seconds = time.perf_counter() - began
    began = time.perf_counter()
    state, _ = trainer.step(state)
    jax.block_until_ready(state)
    first_step_seconds = time.perf_counter() - began
    return state, init_seconds, first_step_seconds


def main():
    args = ARGS
    setups = [(task_map, devices, chunks) for devices in args.devices for task_map in args.task_maps
              for chunks in args.concurrent_chunks]
    runs = {}
    for task_map, devices, chunks in setups:
        trainer = build(task_map, devices, chunks, args)
        state, init_seconds, first_step_seconds = measure(trainer, args)
        runs[(task_map, devices, chunks)] = {"trainer": trainer, "state": state, "rates": [],
                                     "init_seconds": init_seconds, "first_step_seconds": first_step_seconds}
    for _ in range(args.repeats):
        for run in runs.values():
            trainer, state = run["trainer"], run["state"]
            began = time.perf_counter()
            for _ in range(args.meta_steps):
                state, metrics = trainer.step(state)
            jax.block_until_ready(state)
            run["rates"].append(trainer.inner_steps_per_meta_step * args.meta_steps / (time.perf_counter() - began))
            run["state"] = state
    baseline = np.median(runs[setups[0]]["rates"])
    report = {"device": str(jax.devices()[0]), "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "jax": jax.__version__, "settings": {k: v for k, v in vars(args).items()},
              "results": []}
    print(f"PES meta-training, {args.optimizer} on digits MLP 64-32-32-10, {args.num_tasks} tasks x 2 particles, "
          f"truncation {args.trunc_length}, horizon {args.horizon}")
    print(f"{'task_map':<10}{'devices':>8}{'chunks':>7}{'inner steps/s':>15}{'x first':>9}{'init s':>8}{'1st step s':>12}")
    for (task_map, devices, chunks), run in runs.items():
        rate = float(np.median(run["rates"]))
        row = {"task_map": task_map, "devices": devices, "concurrent_chunks": chunks,
               "inner_steps_per_s": rate, "ratio_to_first": rate / baseline,
               "init_compile_seconds": run["init_seconds"], "first_meta_step_seconds": run["first_step_seconds"]}
        report["results"].append(row)
        print(f"{task_map:<10}{devices:>8}{'-' if chunks is None else chunks:>7}{rate:>15,.0f}{rate / baseline:>9.2f}{run['init_seconds']:>8.2f}"
              f"{run['first_step_seconds']:>12.2f}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
