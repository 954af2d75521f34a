"""Ships a trained optimizer with the package: copies an export into lopt/pretrained/NAME.lopt with its benchmark figures.

    python scripts/ship_pretrained.py --export runs/q/optimizer.lopt --name small_fc_lopt_digits8 \\
        --evaluation runs/eval_digits/evaluation.json --description "..." --command "lopt-meta-train ..."

The export keeps its optimizer, meta-params and provenance (config, meta-steps, date, versions);
provenance gains `pretrained` (name, description, commands, source digest) and `benchmark`
(per setting and optimizer: final losses, speedup over tuned Adam, tuned learning rates) taken
from an `lopt-evaluate` evaluation.json or a scripts/bench_quality.py result.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import lopt
from meta_train.evaluation.run import optimizer_digest
from meta_train.evaluation.speedup import SPEEDUP_DEFINITION

PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "lopt" / "pretrained"
KEPT = ("kind", "final_train_loss", "final_valid_loss", "learning_rates", "num_at_grid_edge")


def _entry(entry: Dict[str, Any]) -> Dict[str, Any]:
    kept = {k: entry[k] for k in KEPT if k in entry}
    if "speedup" in entry:
        kept["speedup"] = {k: v for k, v in entry["speedup"].items() if k != "per_run"}
    return kept


def benchmark_figures(result: Dict[str, Any]) -> Dict[str, Any]:
    """Returns the per-setting summary of an evaluation.json or a bench_quality JSON, without curves."""
    if "evaluation" in result:
        arguments = None
        described = {s["label"]: s for s in result.get("settings", [])}
        settings = {label: {**described.get(label, {}), "optimizers": entries}
                    for label, entries in result["evaluation"]["settings"].items()}
        extra = {"targets": result.get("targets"), "command": result.get("command")}
    else:
        arguments = result["arguments"]
        settings, extra = result["settings"], {}
    figures = {}
    for label, setting in settings.items():
        figures[label] = {k: setting[k] for k in ("family", "family_kwargs", "num_steps") if k in setting}
        figures[label]["optimizers"] = {name: _entry(entry) for name, entry in setting["optimizers"].items()}
    if arguments:
        extra = {k: arguments[k] for k in ("num_tasks", "seeds", "task_seed", "learning_rates", "tune_on", "reference")}
    extra["speedup_definition"] = SPEEDUP_DEFINITION
    return {"settings": figures, **{k: v for k, v in extra.items() if v is not None}}


def ship(export: Path, name: str, evaluation: Optional[Path], description: str, commands: List[str],
         out_dir: Path = PRETRAINED_DIR) -> Path:
    """Writes `export` as out_dir/NAME.lopt with pretrained metadata and benchmark figures added to its provenance."""
    loaded = lopt.load(export)
    provenance = dict(loaded.provenance)
    provenance["pretrained"] = {
        "name": name, "description": description, "commands": commands, "source_file": export.name,
        "optimizer_digest": optimizer_digest(loaded),
        "shipped": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if evaluation is not None:
        provenance["benchmark"] = benchmark_figures(json.loads(evaluation.read_text()))
    return lopt.save(out_dir / f"{name}.lopt", loaded.optimizer, loaded.meta_params, provenance)


def main(argv: Optional[List[str]] = None) -> int:
    """Command line of ship()."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", required=True, type=Path)
    p.add_argument("--name", required=True, help="name for lopt.pretrained.load(NAME)")
    p.add_argument("--evaluation", type=Path, help="evaluation.json of lopt-evaluate, or a bench_quality JSON")
    p.add_argument("--description", default="")
    p.add_argument("--command", action="append", default=[], help="command that produced it (repeatable)")
    p.add_argument("--out-dir", type=Path, default=PRETRAINED_DIR)
    args = p.parse_args(argv)
    try:
        path = ship(args.export, args.name, args.evaluation, args.description, args.command, args.out_dir)
    except (ValueError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
