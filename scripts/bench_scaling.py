"""Benchmark: PES inner steps per second against number of devices and tasks per device (shard_map).

On a CPU the devices are forced host-platform devices sharing the same cores, so this shows
the overhead of splitting rather than a speed-up; on a GPU/TPU host it measures real scaling.

    python scripts/bench_scaling.py --devices 1 2 4 8 --tasks-per-device 1 2 4 --out benchmarks/scaling_cpu.json
"""

from __future__ import annotations

import argparse
import os
import sys

PARSER = argparse.ArgumentParser(description=__doc__.splitlines()[0])
PARSER.add_argument("--devices", nargs="*", type=int, default=[1, 2, 4, 8])
PARSER.add_argument("--tasks-per-device", nargs="*", type=int, default=[1, 2, 4])
PARSER.add_argument("--trunc-length", type=int, default=20)
PARSER.add_argument("--horizon", type=int, default=200)
PARSER.add_argument("--meta-steps", type=int, default=10)
PARSER.add_argument("--out", default="benchmarks/scaling.json")
ARGS = PARSER.parse_args()
from meta_train.parallel import force_host_devices  # noqa: E402  (imports jax; its backend starts later)

if max(ARGS.devices) > 1 and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    force_host_devices(max(ARGS.devices))

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import optax  # noqa: E402

import lopt  # noqa: E402
import meta_train  # noqa: E402
import tasks  # noqa: E402


def main():
    if jax.default_backend() == "cpu" and jax.device_count() < max(ARGS.devices):
        raise SystemExit(f"only {jax.device_count()} devices visible")
    family = tasks.get("mlp_image", dataset="digits", hidden=(32, 32), batch_size=128)
    results = []
    print(f"{'devices':>8}{'tasks/device':>14}{'tasks':>7}{'inner steps/s':>15}{'per device':>12}{'compile s':>11}")
    for devices in ARGS.devices:
        for per_device in ARGS.tasks_per_device:
            num_tasks = devices * per_device
            trainer = meta_train.Trainer(
                family, lopt.get("small_fc_lopt"), meta_train.PES(num_tasks, ARGS.trunc_length, 0.01),
                meta_train.ConstantHorizon(ARGS.horizon), optax.adam(1e-3),
                parallelism=meta_train.TaskParallelism("shard_map" if devices > 1 else "none", devices),
            )
            began = time.perf_counter()
            state = trainer.init(jax.random.key(0))
            state, _ = trainer.step(state)
            jax.block_until_ready(state)
            compile_seconds = time.perf_counter() - began
            began = time.perf_counter()
            for _ in range(ARGS.meta_steps):
                state, _ = trainer.step(state)
            jax.block_until_ready(state)
            rate = trainer.inner_steps_per_meta_step * ARGS.meta_steps / (time.perf_counter() - began)
            results.append({"devices": devices, "tasks_per_device": per_device, "num_tasks": num_tasks,
                            "inner_steps_per_s": rate, "per_device": rate / devices, "compile_seconds": compile_seconds})
            print(f"{devices:>8}{per_device:>14}{num_tasks:>7}{rate:>15,.0f}{rate / devices:>12,.0f}{compile_seconds:>11.2f}")
    report = {"backend": jax.default_backend(), "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
              "jax": jax.__version__, "settings": vars(ARGS), "results": results}
    os.makedirs(os.path.dirname(ARGS.out) or ".", exist_ok=True)
    with open(ARGS.out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"wrote {ARGS.out}")


if __name__ == "__main__":
    sys.exit(main())
