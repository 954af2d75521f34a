"""Command-line entry points: `lopt-meta-train` and `lopt-export`. Errors a user can fix are printed as one line."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from meta_train import config as config_lib
from meta_train import interruption

USER_ERRORS = (ValueError, OSError, RuntimeError)


def _fail(err: BaseException) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2


def meta_train_main(argv: Optional[List[str]] = None) -> int:
    """`lopt-meta-train --config FILE [--config.key=value ...] --workdir DIR`: runs or resumes meta-training.

    SIGINT (Ctrl-C) or SIGTERM (a cluster's preemption) finishes the current meta-step, saves a
    checkpoint and exits with 130 or 143; a second signal exits at once.
    """
    parser = argparse.ArgumentParser(prog="lopt-meta-train", description="Meta-train a learned optimizer from a config file.")
    parser.add_argument("--config", required=True, help="Python config file defining get_config()")
    parser.add_argument("--workdir", required=True, help="run folder: checkpoints, metrics.jsonl, optimizer.lopt")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop (checkpointed and exported) once this much training time is spent, earlier "
                             "invocations of the same workdir included")
    args, overrides = parser.parse_known_args(argv)
    try:
        from meta_train import run

        config = config_lib.parse_overrides(config_lib.load_config(args.config), overrides)
        if args.max_minutes is not None and not args.max_minutes > 0:
            raise config_lib.ConfigError(f"--max-minutes must be positive, got {args.max_minutes}")
        max_seconds = None if args.max_minutes is None else 60.0 * args.max_minutes
        with interruption.graceful_stop() as stop:
            summary = run.meta_train(config, args.workdir, show_progress=not args.no_progress,
                                     max_seconds=max_seconds, stop=stop)
    except USER_ERRORS as err:
        return _fail(err)
    if summary["interrupted_by"]:
        if summary["process_index"] == 0:
            saved = (f"checkpoint at meta-step {summary['saved_step']} saved in {summary['workdir']}"
                     if summary["saved_step"] is not None else "stopped before the first meta-step, nothing to save")
            print(f"interrupted by {summary['interrupted_by']}: {saved}; rerun the same command to resume",
                  file=sys.stderr)
        return summary["exit_status"]
    if summary["process_index"] == 0:
        if summary["stopped_early"]:
            print(f"stopped at meta-step {summary['meta_steps']} after {summary['train_seconds'] / 60:.1f} min "
                  f"(--max-minutes); rerun the same command with a larger budget to continue")
        print(f"exported trained optimizer to {summary['export']}")
    print(f"process {summary['process_index']}: meta-params sha256 {summary['meta_params_sha256']}")
    return 0


def export_main(argv: Optional[List[str]] = None) -> int:
    """`lopt-export --workdir DIR [--out FILE]`: writes the latest checkpoint as an export file."""
    parser = argparse.ArgumentParser(prog="lopt-export", description="Export a run's learned optimizer to one file.")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", default=None, help="output file (default: WORKDIR/optimizer.lopt)")
    args = parser.parse_args(argv)
    try:
        from meta_train import run

        path = run.export_workdir(args.workdir, args.out)
    except USER_ERRORS as err:
        return _fail(err)
    print(f"wrote {path}")
    return 0
