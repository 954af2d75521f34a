"""Ablation of the generalist recipe: each lever switched off in its own fixed-time meta-training run, then all
rows judged side by side on the held-out suite.

    python scripts/bench_ablation.py --data-dir /path/to/data --meta-steps 3000 \
        --out benchmarks/ablation.json [--rows recipe no_augmentation ...] [--extra shipped=FILE]

Rows (each a change to configs/generalist.py). Every row gets the same budget: --meta-steps meta-steps
with the meta-learning-rate decay shortened to match (the fair choice on a shared machine), or
--minutes of training time (the cap used when only wall time matters).

- `recipe`: the shipped recipe as it is (Celo2 with orthogonalised matrix updates, global
  reparameterisation);
- `no_augmentation`: without reparameterisation;
- `no_orthogonalization`: Celo2-base (the learned rule on every tensor, no Newton-Schulz);
- `small_fc_lopt`: small_fc_lopt (step_mult 1e-2) in place of the Celo2 rule;
- `small_fc_lopt_mup`: the same with the maximal-update option (mup=True).

Each row meta-trains in WORKDIR/<row> through `lopt-meta-train` (rerunning the
command resumes unfinished rows and skips finished ones), then one `lopt-evaluate --suite`
evaluates every row's export (plus any --extra exports, e.g. the full-length run) against the
suite's tuned baselines, and the table of suite aggregates is printed and written as JSON and
markdown beside --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
ROWS: Dict[str, str] = {
    "recipe": "",
    "no_augmentation": "config.task.reparameterize.levels = ()",
    "no_orthogonalization": "config.optimizer.kwargs.orthogonalize = False",
    "small_fc_lopt": ("config.optimizer.name = 'small_fc_lopt'\n"
                      "config.optimizer.kwargs = ml_collections.ConfigDict({'step_mult': 1e-2})"),
    "small_fc_lopt_mup": ("config.optimizer.name = 'small_fc_lopt'\n"
                          "config.optimizer.kwargs = ml_collections.ConfigDict({'step_mult': 1e-2, 'mup': True})"),
}


def row_config_source(change: str, meta_steps: Optional[int] = None) -> str:
    """Returns a config file's text: configs/generalist.py with `change` (Python statements on `config`) applied,
    and, given `meta_steps`, a run of that many meta-steps whose meta-learning rate decays over them."""
    if meta_steps is not None:
        change = (change + "\n" if change else "") + (f"config.meta_train.num_steps = {meta_steps}\n"
                                                       f"config.meta_train.meta_lr_schedule.kwargs.decay_steps = {meta_steps}")
    body = textwrap.indent(change or "pass", "    ")
    return (
        '"""configs/generalist.py with one ablation change (written by scripts/bench_ablation.py)."""\n'
        "import importlib.util\n\nimport ml_collections\n\n"
        f'_spec = importlib.util.spec_from_file_location("generalist", {str(REPO / "configs" / "generalist.py")!r})\n'
        "_generalist = importlib.util.module_from_spec(_spec)\n_spec.loader.exec_module(_generalist)\n\n\n"
        f"def get_config():\n    config = _generalist.get_config()\n{body}\n    return config\n"
    )


def meta_train_row(row: str, workdir: Path, minutes: Optional[float], meta_steps: Optional[int],
                   data_dir: str) -> Path:
    """Meta-trains one row for `meta_steps` meta-steps or `minutes` of training time (resuming if started)
    and returns its export file."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir.parent / f"{row}_config.py"
    config_file.write_text(row_config_source(ROWS[row], meta_steps))
    env = dict(os.environ, LOPT_DATA_DIR=data_dir) if data_dir else dict(os.environ)
    command = ["lopt-meta-train", "--config", str(config_file), "--workdir", str(workdir), "--no-progress"]
    if minutes is not None:
        command += ["--max-minutes", str(minutes)]
    print(f"[{row}] {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, env=env)
    return workdir / "optimizer.lopt"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Returns the benchmark's command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--meta-steps", type=int, help="meta-steps per row (meta-lr decays over them)")
    budget.add_argument("--minutes", type=float, help="meta-training time per row")
    p.add_argument("--workdir", default="runs/ablation")
    p.add_argument("--data-dir", default=os.environ.get("LOPT_DATA_DIR", ""))
    p.add_argument("--suite", default="heldout")
    p.add_argument("--budget-scale", type=float, default=1.0, help="the suite's --budget-scale")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=FILE",
                   help="another export evaluated beside the rows (e.g. the full-length run)")
    p.add_argument("--out", default="benchmarks/ablation.json")
    p.add_argument("--evaluate-only", action="store_true",
                   help="skip meta-training: evaluate the exports the rows' workdirs already hold")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    """Meta-trains every requested row, evaluates them together on the suite, and writes the table."""
    args = parse_args(argv)
    root = Path(args.workdir).absolute()
    exports = {}
    for row in args.rows:
        if args.evaluate_only:
            exports[row] = root / row / "optimizer.lopt"
            if not exports[row].is_file():
                raise SystemExit(f"error: --evaluate-only: {exports[row]} does not exist; meta-train the row first")
        else:
            exports[row] = meta_train_row(row, root / row, args.minutes, args.meta_steps, args.data_dir)
    labelled = dict(spec.split("=", 1) for spec in args.extra)
    # lopt-evaluate names each row after its file's stem, so every export is linked under its row's name
    named = root / "exports"
    named.mkdir(exist_ok=True)
    for name, path in {**exports, **labelled}.items():
        link = named / f"{name}.lopt"
        link.unlink(missing_ok=True)
        link.symlink_to(Path(path).absolute())
    out = Path(args.out)
    evaluation_dir = root / f"suite_{args.suite}_x{args.budget_scale:g}"
    command = ["lopt-evaluate", "--suite", args.suite, "--budget-scale", str(args.budget_scale),
               "--out", str(evaluation_dir)]
    for name in [*exports, *labelled]:
        command += ["--export", str(named / f"{name}.lopt")]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    summary = json.loads((evaluation_dir / "suite.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": "python scripts/bench_ablation.py " + " ".join(sys.argv[1:]),
                               "minutes_per_row": args.minutes, "meta_steps_per_row": args.meta_steps,
                               "rows": args.rows, "suite": summary}, indent=2))
    (out.with_suffix(".md")).write_text((evaluation_dir / "suite.md").read_text())
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
