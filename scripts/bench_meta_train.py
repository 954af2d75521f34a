"""Benchmark: PES meta-training throughput of small_fc_lopt on the small digits MLP (8x8 -> 32 -> 32 -> 10).

8 tasks, antithetic pairs, truncation 20, horizon 200 by default. Reports inner steps per
second (tasks x 2 x truncation per meta-step) and the compile time of the first meta-step
for each task-map choice and device count, side by side in one run, as JSON.

Each device count runs in its own child process, because the number of CPU devices is fixed
when JAX starts (meta_train.parallel.force_host_devices). With more than one device the tasks
are spread over them with shard_map; `--one-thread-per-device on off` compares keeping each
device's matmuls on one thread (the default of force_host_devices) against XLA's multi-threaded
matmuls. `--loop-unrolling on off` compares XLA:CPU's loop unrolling on (its default) and off
(config key `xla_cpu_loop_unrolling=False`, which compiles the meta-step faster), each in its
own child process too, since it is an XLA_FLAGS setting.

    python scripts/bench_meta_train.py --out benchmarks/meta_train_cpu.json
    python scripts/bench_meta_train.py --devices 1 2 4 --task-maps map --one-thread-per-device on off
    python scripts/bench_meta_train.py --devices 1 2 --task-maps map vmap --compile-cache
    python scripts/bench_meta_train.py --devices 2 --task-maps map --loop-unrolling on off --compile-cache
    python scripts/bench_meta_train.py --config configs/cnn_cifar.py --set task.kwargs.dataset=digits --network flax hand

`--config FILE` measures the trainer a config file describes instead (with `--set key=value`
overrides, as lopt-meta-train's `--config.key=value`), with the config's own devices, task
map and loop unrolling. `--network flax hand` compares the built-in family's flax network
(tasks/networks.py) with the hand-written one it replaced (tests/hand_networks.py), on the
same family, data and initial state; every repeat measures each setting in turn, alternating
the order, and the report gives the median of the per-repeat ratios to the first setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NETWORKS = ("flax", "hand")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task-maps", nargs="*", default=["vmap", "map"])
    parser.add_argument("--devices", nargs="*", type=int, default=[1], help="device counts (shard_map when > 1)")
    parser.add_argument("--one-thread-per-device", nargs="*", default=["on"], choices=["on", "off"],
                        help="with > 1 device: keep each device's matmuls on one thread (on) or not (off)")
    parser.add_argument("--loop-unrolling", nargs="*", default=["on"], choices=["on", "off"],
                        help="XLA:CPU's loop unrolling (config key xla_cpu_loop_unrolling): on (XLA's default) or off, "
                             "which compiles faster")
    parser.add_argument("--num-tasks", type=int, default=8)
    parser.add_argument("--trunc-length", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--meta-steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--optimizer", default="small_fc_lopt")
    parser.add_argument("--concurrent-chunks", nargs="*", type=int, default=[None],
                        help="small_fc_lopt only: values of small_fc_lopt's concurrent_chunks to compare (default: its own)")
    parser.add_argument("--config", default="", help="measure the trainer of this config file (its devices, task map "
                        "and loop unrolling) instead of the digits MLP")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="with --config: a config override, e.g. task.kwargs.dataset=digits (repeatable)")
    parser.add_argument("--network", nargs="*", default=["flax"], choices=NETWORKS,
                        help="the built-in family's flax network, the hand-written one it replaced, or both")
    parser.add_argument("--out", default="benchmarks/meta_train.json")
    parser.add_argument("--compile-cache", action="store_true",
                        help="also report the first meta-step of a second process that loads it from a fresh "
                             "persistent compile cache (what a resumed lopt-meta-train run does)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build(task_map: str, devices: int, chunks, network: str, args):
    """Returns the PES trainer the benchmark measures, its family's tasks applying `network`."""
    import optax

    import lopt
    import meta_train
    import tasks

    if args.config:
        from meta_train.build import build_from_file

        trainer = build_from_file(args.config, [f"--config.{override}" for override in args.set]).trainer
    else:
        family = tasks.get("mlp_image", dataset="digits", hidden=(32, 32), batch_size=128, activations=("relu",))
        parallelism = meta_train.TaskParallelism("shard_map" if devices > 1 else "none", devices)
        trainer = meta_train.Trainer(
            family, lopt.get(args.optimizer, **({} if chunks is None else {"concurrent_chunks": chunks})),
            meta_train.PES(args.num_tasks, args.trunc_length, 0.01, task_map=task_map),
            meta_train.ConstantHorizon(args.horizon), optax.adam(1e-3), parallelism=parallelism,
        )
    if network == "hand":
        from meta_train.trainer import place_replicated

        sys.path.insert(0, str(REPO))
        from tests.hand_networks import hand_written

        trainer.family = place_replicated(hand_written(trainer.family), trainer.parallelism.replicated_sharding())
    return trainer


def measure(trainer, args):
    """Returns (state after the first meta-step, init seconds, first meta-step seconds)."""
    import jax

    began = time.perf_counter()
    state = trainer.init(jax.random.key(0))
    jax.block_until_ready(state)
    init_seconds = time.perf_counter() - began
    began = time.perf_counter()
    state, _ = trainer.step(state)
    jax.block_until_ready(state)
    first_step_seconds = time.perf_counter() - began
    return state, init_seconds, first_step_seconds


def run_child(args) -> list:
    """Measures every setting (task map, chunks, network) on this process's devices; returns result rows."""
    import jax
    import numpy as np

    devices = jax.device_count()
    task_maps = ["config"] if args.config else args.task_maps
    setups = [(task_map, chunks, network) for task_map in task_maps for chunks in args.concurrent_chunks
              for network in args.network]
    runs = {}
    for setup in setups:
        task_map, chunks, network = setup
        trainer = build(task_map, devices, chunks, network, args)
        state, init_seconds, first_step_seconds = measure(trainer, args)
        runs[setup] = {"trainer": trainer, "state": state, "rates": [],
                       "init_seconds": init_seconds, "first_step_seconds": first_step_seconds}
    for repeat in range(args.repeats):
        # alternate the order, so drift of a shared machine within a repeat falls on every setting alike
        for run in list(runs.values())[:: 1 if repeat % 2 == 0 else -1]:
            trainer, state = run["trainer"], run["state"]
            began = time.perf_counter()
            for _ in range(args.meta_steps):
                state, _ = trainer.step(state)
            jax.block_until_ready(state)
            run["rates"].append(trainer.inner_steps_per_meta_step * args.meta_steps / (time.perf_counter() - began))
            run["state"] = state
    first = np.asarray(next(iter(runs.values()))["rates"])
    rows = []
    for (task_map, chunks, network), run in runs.items():
        rows.append({
            "task_map": run["trainer"].estimator.task_map if args.config else task_map,
            "devices": devices, "concurrent_chunks": chunks, "network": network,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "inner_steps_per_s": float(np.median(run["rates"])), "rates": run["rates"],
            # per repeat, to the first setting measured in the same process and repeat
            "paired_ratios": (np.asarray(run["rates"]) / first).tolist(),
            "init_compile_seconds": run["init_seconds"], "first_meta_step_seconds": run["first_step_seconds"],
            **({"loop_unrolling": args.config_unrolling, "one_thread_per_device": devices > 1} if args.config else {}),
        })
    return rows


def child_command(args, devices: int, one_thread: str, unrolling: str, cache_dir: str = "") -> list:
    command = [sys.executable, os.path.abspath(__file__), "--child", "--cache-dir", cache_dir, "--devices", str(devices),
               "--one-thread-per-device", one_thread, "--loop-unrolling", unrolling, "--task-maps", *args.task_maps,
               "--num-tasks", str(args.num_tasks), "--trunc-length", str(args.trunc_length),
               "--horizon", str(args.horizon), "--meta-steps", str(args.meta_steps),
               "--repeats", str(args.repeats), "--optimizer", args.optimizer, "--network", *args.network]
    if args.config:
        command += ["--config", args.config] + [f"--set={override}" for override in args.set]
    chunks = [str(c) for c in args.concurrent_chunks if c is not None]
    return command + (["--concurrent-chunks", *chunks] if chunks else [])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        from meta_train.parallel import force_host_devices, set_cpu_loop_unrolling

        if args.config:
            from meta_train import launch
            from meta_train.config import load_config, parse_overrides

            config = parse_overrides(load_config(args.config), [f"--config.{override}" for override in args.set])
            args.config_unrolling = launch.apply_cpu_loop_unrolling(config) and bool(config.xla_cpu_loop_unrolling)
            launch.apply_host_devices(config)
        else:
            set_cpu_loop_unrolling(args.loop_unrolling[0] == "on")
            force_host_devices(args.devices[0], one_thread_per_device=args.one_thread_per_device[0] == "on")
        from meta_train.run import persistent_compile_cache

        with persistent_compile_cache(Path(args.cache_dir) if args.cache_dir else None):
            print(json.dumps(run_child(args)))
        return 0
    rows = []
    if args.config:  # the config sets the devices and loop unrolling: one child
        args.devices, args.loop_unrolling, args.one_thread_per_device = [1], ["on"], ["on"]
    for devices, unrolling in [(d, u) for d in args.devices for u in args.loop_unrolling]:
        for one_thread in (args.one_thread_per_device if devices > 1 else ["on"]):
            with tempfile.TemporaryDirectory() as cache_dir:
                children = [child_command(args, devices, one_thread, unrolling, cache_dir if args.compile_cache else "")]
                if args.compile_cache:
                    children.append(children[0])
                outputs = []
                for command in children:
                    done = subprocess.run(command, capture_output=True, text=True)
                    if done.returncode != 0:
                        print(done.stderr[-3000:], file=sys.stderr)
                        return done.returncode
                    outputs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            for index, row in enumerate(outputs[0]):
                row.setdefault("one_thread_per_device", devices > 1 and one_thread == "on")
                row.setdefault("loop_unrolling", unrolling == "on")
                if args.compile_cache:
                    row["first_meta_step_seconds_cached"] = outputs[1][index]["first_meta_step_seconds"]
                rows.append(row)
    import jax
    import numpy as np

    baseline = rows[0]["inner_steps_per_s"]
    report = {"device": "cpu", "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "processor": platform.processor(), "jax": jax.__version__,
              "settings": {k: v for k, v in vars(args).items() if k != "child"}, "results": rows}
    if args.config:
        print(f"meta-training as configured by {args.config} {' '.join(args.set)}".rstrip())
    else:
        print(f"PES meta-training, {args.optimizer} on digits MLP 64-32-32-10, {args.num_tasks} tasks x 2 particles, "
              f"truncation {args.trunc_length}, horizon {args.horizon}")
    print(f"{'task_map':<10}{'devices':>8}{'1 thread':>9}{'unroll':>7}{'chunks':>7}{'network':>8}{'inner steps/s':>15}"
          f"{'x first':>9}{'paired x (min-max)':>20}{'init s':>8}{'1st step s':>12}"
          + (f"{'cached':>8}" if args.compile_cache else ""))
    for row in rows:
        row["ratio_to_first"] = row["inner_steps_per_s"] / baseline
        row["median_paired_ratio"] = float(np.median(row["paired_ratios"]))
        chunks = "-" if row["concurrent_chunks"] is None else row["concurrent_chunks"]
        one_thread = "yes" if row["one_thread_per_device"] else "no"
        unroll = "yes" if row["loop_unrolling"] else "no"
        paired = f"{row['median_paired_ratio']:.3f} ({min(row['paired_ratios']):.2f}-{max(row['paired_ratios']):.2f})"
        print(f"{row['task_map']:<10}{row['devices']:>8}{one_thread:>9}{unroll:>7}{chunks:>7}{row['network']:>8}"
              f"{row['inner_steps_per_s']:>15,.0f}{row['ratio_to_first']:>9.2f}{paired:>20}"
              f"{row['init_compile_seconds']:>8.2f}{row['first_meta_step_seconds']:>12.2f}"
              + (f"{row['first_meta_step_seconds_cached']:>8.2f}" if args.compile_cache else ""))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
