"""Runs one benchmark script from two source trees, alternating, and reports each figure's after/before ratio.

    git worktree add /tmp/before <commit>
    python scripts/bench_before_after.py --before /tmp/before --metric inner_steps_per_s --repeats 2 \
        --out benchmarks/before_after_meta_train.json -- scripts/bench_meta_train.py --devices 2 --task-maps map

The benchmark (a path inside the repository, and its arguments after `--`) runs as
`python TREE/SCRIPT ARGS --out FILE` with TREE on PYTHONPATH and as the working directory, for
the `--before` tree and this one in turn, `--repeats` times each, so slow drift of a shared
machine falls on both sides alike. Every number in the benchmark's JSON whose key matches
`--metric` is averaged over repeats per side; the table prints before, after and after/before.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]


def numbers(tree: Any, path: str = "") -> Dict[str, float]:
    """Returns every number in a JSON tree keyed by its path (`rows.0.inner_steps_per_s`)."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in numbers(value, f"{path}.{key}" if path else key).items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in numbers(value, f"{path}.{i}" if path else str(i)).items()}
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {path: float(tree)}
    return {}


def run_once(tree: Path, script: str, arguments: List[str]) -> Dict[str, float]:
    """Runs the benchmark from `tree` and returns the numbers of the JSON it writes."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        env = dict(os.environ, PYTHONPATH=str(tree))
        done = subprocess.run([sys.executable, str(tree / script), *arguments, "--out", str(out)], cwd=tree, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"error: {script} failed in {tree}: {done.stderr.strip().splitlines()[-1:]}")
        return numbers(json.loads(out.read_text()))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Returns the command-line arguments; the benchmark and its arguments follow `--`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="source tree of the earlier version (e.g. a git worktree)")
    parser.add_argument("--metric", required=True, help="regular expression on the last key of the figures to compare")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("benchmark", nargs=argparse.REMAINDER, help="-- SCRIPT [ARGS...]")
    args = parser.parse_args(argv)
    args.benchmark = [a for a in args.benchmark if a != "--"] if args.benchmark[:1] == ["--"] else args.benchmark
    if not args.benchmark:
        parser.error("give the benchmark after --, e.g. -- scripts/bench_step.py --models small")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Alternates the two trees, prints the table of ratios and writes the JSON."""
    args = parse_args(argv)
    script, arguments = args.benchmark[0], args.benchmark[1:]
    trees = {"before": Path(args.before).absolute(), "after": REPO}
    pattern = re.compile(args.metric)
    runs: Dict[str, List[Dict[str, float]]] = {"before": [], "after": []}
    began = time.perf_counter()
    for repeat in range(args.repeats):
        for side in ("before", "after"):
            figures = run_once(trees[side], script, arguments)
            runs[side].append({k: v for k, v in figures.items() if pattern.search(k.split(".")[-1])})
            print(f"repeat {repeat + 1}/{args.repeats}: {side} done", file=sys.stderr, flush=True)
    keys = sorted(set.intersection(*(set(r) for r in runs["before"] + runs["after"])))
    rows = []
    print(f"| figure | before | after | after / before |\n|---|---|---|---|")
    for key in keys:
        before = sum(r[key] for r in runs["before"]) / args.repeats
        after = sum(r[key] for r in runs["after"]) / args.repeats
        rows.append({"figure": key, "before": before, "after": after, "ratio": after / before if before else None})
        print(f"| {key} | {before:.4g} | {after:.4g} | {after / before if before else float('nan'):.3f} |")
    result = {"command": "python scripts/bench_before_after.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": f"{platform.machine()} {os.cpu_count()} CPUs visible", "seconds": time.perf_counter() - began,
              "before_tree": str(trees["before"]), "repeats": args.repeats, "rows": rows, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
