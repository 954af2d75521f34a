"""Interrupts a meta-training run as a cluster would, resumes it each time, and checks the result.

Three kinds of interruption, in random order:
- SIGKILL at random moments; about half aim at checkpoint writes (the script polls the
  checkpoint folder and kills the moment a temporary checkpoint appears);
- SIGTERM at random moments: the run must exit with 143 and one line saying which meta-step it
  saved, leaving no temporary checkpoint folder (a SIGTERM that lands before the signal
  handlers are installed simply ends the process, as it would any program: counted as early);
- a damaged newest checkpoint (truncated, deleted or garbage array files): the next start must
  warn in one line, move it aside as <step>.corrupt and resume from the previous one (it is
  then stopped by SIGTERM once resumed).
The final meta-params and every metrics line (timings aside) must be bit-identical to an
uninterrupted run with the same seed.

    python scripts/chaos_resume.py --kills 20 --terms 5 --corruptions 3 --workdir /tmp/chaos --out benchmarks/chaos.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
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
        config.optimizer.name = "small_fc_lopt"
        config.optimizer.kwargs.hidden_sizes = (16, 16)
        config.optimizer.kwargs.step_mult = 0.01
        config.meta_train.num_tasks = 4
        config.meta_train.estimator.kwargs.trunc_length = 10
        config.meta_train.horizon.kwargs.length = 50
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


def complete_checkpoints(workdir: Path) -> list:
    folder = workdir / "checkpoints"
    return sorted(int(entry.name) for entry in folder.iterdir() if entry.name.isdigit()) if folder.is_dir() else []


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


SAVED_LINE = re.compile(
    r"interrupted by SIGTERM: (checkpoint at meta-step \d+ saved in .*|stopped before the first meta-step, nothing "
    r"to save); rerun the same command to resume"
)


def graceful_outcome(process: subprocess.Popen, err: str, workdir: Path) -> str:
    """Classifies a SIGTERMed run: 'graceful', 'early' (before its handlers), 'finished', or 'bad: why'."""
    if process.returncode == 0:
        return "finished"
    if process.returncode == -signal.SIGTERM:
        return "early"
    lines = [line for line in err.splitlines() if not line.startswith(("resumed from", "warning:", "note:"))]
    if process.returncode != 143 or len(lines) != 1 or not SAVED_LINE.fullmatch(lines[0]):
        return f"bad: exit {process.returncode}, stderr lines {[line[:300] for line in lines]!r}"
    if checkpoint_write_in_progress(workdir):
        return "bad: a temporary checkpoint folder was left behind"
    return "graceful"


def terminate_once(config_path: Path, workdir: Path, delay: float) -> str:
    """Starts the run and SIGTERMs it after `delay` seconds; returns graceful_outcome's verdict."""
    process = subprocess.Popen(command(config_path, workdir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
    _, err = process.communicate()
    return graceful_outcome(process, err, workdir)


def damage_newest(workdir: Path, rng: random.Random) -> tuple:
    """Damages the array files of the newest complete checkpoint; returns (step, how)."""
    step = complete_checkpoints(workdir)[-1]
    how = rng.choice(["truncated", "deleted", "garbage"])
    for path in (workdir / "checkpoints" / str(step) / "default" / "d").iterdir():
        if how == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif how == "deleted":
            path.unlink()
        else:
            path.write_bytes(bytes(rng.randrange(256) for _ in range(64)))
    return step, how


def corrupt_once(config_path: Path, workdir: Path, rng: random.Random) -> str:
    """Damages the newest checkpoint, restarts the run, and SIGTERMs it once it has resumed."""
    step, how = damage_newest(workdir, rng)
    process = subprocess.Popen(command(config_path, workdir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith("resumed from"):
            process.send_signal(signal.SIGTERM)
            break
    _, rest = process.communicate()
    err = "".join(seen) + rest
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    if len(warnings) != 1 or f"moved to {step}.corrupt" not in warnings[0]:
        return f"bad: {how} checkpoint {step} was not moved aside with one warning: {err[-500:]!r}"
    if not (workdir / "checkpoints" / f"{step}.corrupt").is_dir():
        return f"bad: no {step}.corrupt folder"
    outcome = graceful_outcome(process, err, workdir)
    return f"corrupted {how}" if outcome in ("graceful", "finished") else outcome


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
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs to land")
    parser.add_argument("--terms", type=int, default=5, help="graceful SIGTERM stops to land")
    parser.add_argument("--corruptions", type=int, default=3, help="damaged newest checkpoints to recover from")
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

    began = time.perf_counter()
    reference_seconds = run_to_completion(config_path, root / "reference")
    print(f"uninterrupted run: {reference_seconds:.1f} s")
    outcomes = []
    chaos = root / "chaos"

    def count(*kinds):
        return len([o for o in outcomes if o.split()[0] in kinds])

    def wanted():
        return {"kill": args.kills - count("timed", "checkpoint"), "term": args.terms - count("graceful"),
                "corrupt": args.corruptions - count("corrupted")}

    while any(left > 0 for left in wanted().values()) and not count("bad:"):
        if (chaos / "optimizer.lopt").exists():
            shutil.rmtree(chaos)  # finished before enough interruptions: start the chaos run over
            outcomes.append("restarted")
            continue
        kinds = [kind for kind, left in wanted().items() if left > 0]
        if len(complete_checkpoints(chaos)) < 2 and kinds != ["corrupt"]:
            kinds = [kind for kind in kinds if kind != "corrupt"]  # keep an older checkpoint to fall back to
        kind = rng.choice(kinds)
        delay = rng.uniform(0.1, 1.0) * reference_seconds
        if kind == "kill":
            outcome = kill_once(config_path, chaos, delay, rng.random() < 0.5, limit=reference_seconds * 1.5)
        elif kind == "term":
            outcome = terminate_once(config_path, chaos, delay)
        elif len(complete_checkpoints(chaos)) >= 2:
            outcome = corrupt_once(config_path, chaos, rng)
        else:
            kind = "term (too early to corrupt)"
            outcome = terminate_once(config_path, chaos, delay)
        outcomes.append(outcome)
        print(f"{kind} {len(outcomes)}: {outcome}" + ("" if kind == "corrupt" else f" (after {delay:.1f} s)"))
    if not (chaos / "optimizer.lopt").exists():
        run_to_completion(config_path, chaos)
    result = compare(root / "reference", chaos)
    result.update(
        kills=count("timed", "checkpoint"),
        kills_during_checkpoint_write=count("checkpoint"),
        graceful_terms=count("graceful"),
        early_terms=count("early"),
        corruptions_recovered=count("corrupted"),
        failures=[o for o in outcomes if o.startswith("bad:")],
        outcomes=outcomes,
        reference_seconds=reference_seconds,
        total_seconds=time.perf_counter() - began,
    )
    print(json.dumps({k: v for k, v in result.items() if k != "outcomes"}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    passed = result["identical_meta_params"] and result["identical_metrics"] and not result["failures"]
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
