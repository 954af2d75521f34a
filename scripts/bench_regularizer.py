"""Benchmark: the meta-regulariser's cost per meta-step, measured side by side with the same run without it.

Builds the run of a config (default configs/conv_lopt_cnn.py) once without the regulariser and
once per setting with it, then times interleaved chunks of meta-steps of each and prints the
median seconds per meta-step and the ratio to the run without it; writes a JSON file.

    python scripts/bench_regularizer.py --optimizers conv_lopt small_fc_lopt --out benchmarks/regularizer_cost_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Dict

import jax
import numpy as np

from meta_train import build as build_lib
from meta_train import config as config_lib

REPO = Path(__file__).resolve().parents[1]
SETTINGS: Dict[str, Dict[str, float]] = {
    "off": {},
    "l2": {"l2_weight": 1e-3},
    "smoothness": {"smoothness_weight": 1e-2},
    "l2+smoothness": {"l2_weight": 1e-3, "smoothness_weight": 1e-2},
}


def main() -> None:
    """Times meta-steps with each regulariser setting against the run without it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "conv_lopt_cnn.py"))
    parser.add_argument("--optimizers", nargs="+", default=["conv_lopt", "small_fc_lopt"])
    parser.add_argument("--chunks", type=int, default=7)
    parser.add_argument("--chunk-steps", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/regularizer_cost_cpu.json")
    args = parser.parse_args()
    report = {"config": args.config, "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "jax": jax.__version__,
              "settings": SETTINGS, "optimizers": {}}
    for name in args.optimizers:
        states, trainers = {}, {}
        for label, settings in SETTINGS.items():
            config = config_lib.parse_overrides(config_lib.load_config(args.config), [
                f"--config.optimizer.name={name}", "--config.meta_train.parallel=none",
                "--config.meta_train.host_devices=0"])
            for key, value in settings.items():
                config.meta_train.regularizer[key] = value
            trainer = build_lib.build(config).trainer
            state = trainer.init(jax.random.key(0))
            state, _ = trainer.step(state)  # compiles
            jax.block_until_ready(state)
            trainers[label], states[label] = trainer, state
        times = {label: [] for label in SETTINGS}
        for _ in range(args.chunks):
            for label, trainer in trainers.items():
                began = time.perf_counter()
                for _ in range(args.chunk_steps):
                    states[label], metrics = trainer.step(states[label])
                jax.block_until_ready(states[label])
                times[label].append((time.perf_counter() - began) / args.chunk_steps)
        base = float(np.median(times["off"]))
        report["optimizers"][name] = {label: {"median_s": float(np.median(t)), "ratio_to_off": float(np.median(t)) / base}
                                      for label, t in times.items()}
        print(f"\n{name} on {Path(args.config).name}: median of {args.chunks} chunks x {args.chunk_steps} meta-steps")
        print(f"{'regulariser':<16}{'s/meta-step':>13}{'x off':>8}")
        for label, row in report["optimizers"][name].items():
            print(f"{label:<16}{row['median_s']:>13.4f}{row['ratio_to_off']:>8.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
