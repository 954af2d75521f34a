"""Kills a meta-training run with SIGKILL at random moments, resumes it each time, and checks the result.

The final meta-params and every metrics line (timings aside) must be bit-identical to an
uninterrupted run with the same seed. About half the kills aim at checkpoint writes: the
script polls the checkpoint folder and kills the moment a temporary checkpoint appears.

    python scripts/chaos_resume.py --kills 20 --workdir /tmp/chaos --out benchmarks/chaos.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

CONFIG = textwrap.dedent(
    """
    from meta_train.config import base_config

    def get_config():
        config = base_config()
        config.seed = 7
        config.task.family = "quadratic"
        config.task.kwargs.dim = 16
        config.optimizer.name = "mlp"
        config.optimizer.kwargs.hidden_sizes = (16, 16)
        config.optimizer.kwargs.step_mult = 0.01
        config.meta_train.num_tasks = 4
        config.meta_train.trunc_length = 10
        config.meta_train.horizon_length = 50
        config.meta_train.num_steps = {num_steps}
        config.checkpoint.every = 2
        config.checkpoint.keep = 2
        config.log_every = 1
        config.eval.enabled = False
        return config
    """
)
RUNNER = "import sys; from meta_train.cli import meta_train_main; sys.exit(meta_train_main())"
VOLATILE_METRICS = ("time", "inner_steps_per_s")


def command(config_path: Path, workdir: Path) -> list:
    return [sys.executable, "-c", RUNNER, "--config", str(config_path), "--workdir", str(workdir), "--no-progress"]


def run_to_completion(config_path: Path, workdir: Path) -> float:
    began = time.perf_counter()
    subprocess.run(command(config_path, workdir), check=True, capture_output=True)
    return time.perf_counter() - began


def checkpoint_write_in_progress(workdir: Path) -> bool:
    folder = workdir / "checkpoints"
    return folder.is_dir() and any("tmp" in entry.name for entry in folder.iterdir())


def kill_once(config_path: Path, workdir: Path, delay: float, aim_at_checkpoint: bool, limit: float) -> str:
    """Starts the run and SIGKILLs it; returns how the kill landed ('checkpoint', 'timed', or 'finished')."""
    process = subprocess.Popen(command(config_path, workdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    began = time.perf_counter()
    outcome = "timed"
    while process.poll() is None:
        elapsed = time.perf_counter() - began
        if aim_at_checkpoint and elapsed > delay and checkpoint_write_in_progress(workdir):
            outcome = "checkpoint"
            break
        if elapsed > (limit if aim_at_checkpoint else delay):
            break
        time.sleep(0.001 if aim_at_checkpoint else 0.01)
    if process.poll() is not None:
        return "finished"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return outcome


def metrics_lines(workdir: Path) -> list:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in VOLATILE_METRICS} for line in lines]


def final_meta_params(workdir: Path):
    from lopt import export

    return export.read(workdir / "optimizer.lopt").meta_params


def compare(reference: Path, chaos: Path) -> dict:
    import jax

    ref_params, chaos_params = final_meta_params(reference), final_meta_params(chaos)
    identical_params = all(
        a.dtype == b.dtype and np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(chaos_params))
    ) and jax.tree.structure(ref_params) == jax.tree.structure(chaos_params)
    identical_metrics = metrics_lines(reference) == metrics_lines(chaos)
    return {"identical_meta_params": bool(identical_params), "identical_metrics": bool(identical_metrics)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--num-steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", default=None, help="JSON report path")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(args.workdir).absolute()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config_path = root / "chaos_config.py"
    config_path.write_text(CONFIG.format(num_steps=args.num_steps))

    reference_seconds = run_to_completion(config_path, root / "reference")
    print(f"uninterrupted run: {reference_seconds:.1f} s")
    outcomes = []
    chaos = root / "chaos"
    def kills_so_far():
        return len([o for o in outcomes if o in ("timed", "checkpoint")])

    while kills_so_far() < args.kills:
        if (chaos / "optimizer.lopt").exists():
            shutil.rmtree(chaos)  # finished before enough kills: start the chaos run over
            outcomes.append("restarted")
            continue
        aim = rng.random() < 0.5
        delay = rng.uniform(0.1, 1.0) * reference_seconds
        outcome = kill_once(config_path, chaos, delay, aim, limit=reference_seconds * 1.5)
        outcomes.append(outcome)
        print(f"kill {kills_so_far()}: {outcome} (after {delay:.1f} s)")
    if not (chaos / "optimizer.lopt").exists():
        run_to_completion(config_path, chaos)
    result = compare(root / "reference", chaos)
    result.update(
        kills=kills_so_far(),
        kills_during_checkpoint_write=outcomes.count("checkpoint"),
        outcomes=outcomes,
        reference_seconds=reference_seconds,
    )
    print(json.dumps({k: v for k, v in result.items() if k != "outcomes"}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0 if result["identical_meta_params"] and result["identical_metrics"] else 1


if __name__ == "__main__":
    sys.exit(main())
