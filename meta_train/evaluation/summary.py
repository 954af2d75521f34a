"""Summaries of evaluation runs: JSON conversion of curves, per-task baseline tuning over seeds, speedups, and the outputs.

Written files: evaluation.json (every curve, [seeds, tasks, steps]), table.md and curves.png; with TensorBoard
events on, tensorboard/OPTIMIZER/ holds each optimizer's mean curves as one TensorBoard run.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from meta_train.evaluation import curves as evaluate
from meta_train import tensorboard as tensorboard_lib
from meta_train.evaluation import report
from meta_train.evaluation.speedup import SPEEDUP_DEFINITION, SPEEDUP_WINDOW, speedups
from meta_train.files import write_text_atomic

RESULT_FILE = "evaluation.json"
PLOT_FILE = "curves.png"
TABLE_FILE = "table.md"
PLOT_COLUMNS = 4
WINDOW = SPEEDUP_WINDOW


def to_json(array: np.ndarray) -> Any:
    """Returns `array` as nested lists of floats rounded to 6 significant digits, None where not finite."""
    array = np.asarray(array, np.float64)
    rounded = [float(f"{x:.6g}") if np.isfinite(x) else None for x in array.reshape(-1)]
    return np.asarray(rounded, object).reshape(array.shape).tolist() if array.ndim else rounded[0]


def from_json(value: Any) -> np.ndarray:
    """Returns nested lists from to_json as a float64 array (None becomes NaN)."""
    return np.asarray(value, dtype=np.float64)


def curves_json(curves: evaluate.Curves) -> Dict[str, Any]:
    """Returns every field of `curves` as JSON lists."""
    return {field: to_json(getattr(curves, field)) for field in evaluate.Curves._fields}


def curves_from_json(data: Dict[str, Any]) -> evaluate.Curves:
    """Returns the Curves written by curves_json."""
    return evaluate.Curves(*(from_json(data[field]) for field in evaluate.Curves._fields))


def stack(curves: Sequence[evaluate.Curves]) -> evaluate.Curves:
    """Returns the curves stacked on a new leading axis (e.g. seeds)."""
    return evaluate.Curves(*(np.stack(parts) for parts in zip(*curves)))


def _finite_stats(values: np.ndarray) -> Dict[str, Optional[float]]:
    values = np.asarray(values, np.float64).reshape(-1)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "median": None, "num_nonfinite": int(values.size)}
    return {"mean": float(np.mean(finite)), "median": float(np.median(finite)),
            "num_nonfinite": int(values.size - finite.size)}


def _speedup_summary(per_run: np.ndarray) -> Dict[str, Any]:
    flat = per_run.reshape(-1)
    return {"per_run": to_json(per_run), "median": float(np.median(flat)), "min": float(np.min(flat)),
            "reached": int(np.sum(flat > 0)), "runs": int(flat.size)}


LEARNING_RATE_SWEEP_SUFFIX = " (lr sweep)"


def _tuned_entry(spec: Any, per_rate: evaluate.Curves, kind: str) -> Dict[str, Any]:
    """Returns the entry of a learning-rate grid [seeds, rates, tasks, ...] at each task's best rate (mean over seeds)."""
    tuned_on = per_rate.final_losses if spec.tune_on == "train" else per_rate.final_valid_losses
    best = evaluate.best_rate_per_task(tuned_on)
    tasks_index = np.arange(best.shape[0])
    return {
        "kind": kind,
        "curves": evaluate.Curves(*(x[:, best, tasks_index] for x in per_rate)),
        "learning_rates": [float(spec.learning_rates[i]) for i in best],
        "num_at_grid_edge": int(np.sum((best == 0) | (best == len(spec.learning_rates) - 1))),
        "grid_final_losses": to_json(per_rate.final_losses),
    }


def aggregate(spec: Any, learned_labels: Sequence[str], results: Dict[Tuple[str, str, int], evaluate.Curves]) -> Dict[str, Any]:
    """Combines unit results: picks baseline learning rates per task (over seeds), computes speedups and the table.

    A learned optimizer whose learning rate was also swept (Spec.tune_learned) gets a second row,
    `LABEL (tuned lr)`, at its per-task best rate, like the baselines.
    """
    settings = {}
    for setting in spec.settings:
        entries: Dict[str, Dict[str, Any]] = {}
        for label in learned_labels:
            curves = stack([results[(setting.label, label, s)] for s in spec.seeds])
            entries[label] = {"kind": "learned", "curves": curves}
            sweep = [results.get((setting.label, label + LEARNING_RATE_SWEEP_SUFFIX, s)) for s in spec.seeds]
            if all(item is not None for item in sweep):
                entries[f"{label} (tuned lr)"] = _tuned_entry(spec, stack(sweep), "learned")
        for name in spec.baselines:
            per_rate = stack([results[(setting.label, name, s)] for s in spec.seeds])  # [seeds, rates, tasks, ...]
            entries[f"{name} (tuned lr)"] = _tuned_entry(spec, per_rate, "baseline")
        reference = entries.get(f"{spec.reference} (tuned lr)")
        for entry in entries.values():
            curves = entry["curves"]
            entry["final_train_loss"] = _finite_stats(curves.final_losses)
            entry["final_valid_loss"] = _finite_stats(curves.final_valid_losses)
            if reference is not None:
                entry["speedup"] = _speedup_summary(speedups(curves.train_losses, reference["curves"].train_losses))
        settings[setting.label] = {
            "family": setting.family, "family_kwargs": setting.family_kwargs, "num_steps": setting.num_steps,
            "valid_steps": evaluate.validation_steps(setting.num_steps, spec.valid_every).tolist(),
            "optimizers": entries,
        }
    return {"settings": settings, "table": format_tables(spec, settings)}


def _number(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _speedup_text(value: float) -> str:
    return f"{value:.2f}x" if value > 0 else "not reached"


def _rate_text(entry: Dict[str, Any]) -> str:
    if "learning_rates" not in entry:
        return "-"
    rates = np.asarray(entry["learning_rates"])
    text = f"{np.median(rates):.3g} ({rates.min():.3g}..{rates.max():.3g})"
    return text + (f", {entry['num_at_grid_edge']} at grid edge" if entry["num_at_grid_edge"] else "")


def format_tables(spec: Any, settings: Dict[str, Dict[str, Any]]) -> str:
    """Returns the markdown report: one table per setting with final losses, tuned learning rates and speedups."""
    runs = f"{spec.num_tasks} held-out tasks x {len(spec.seeds)} seed(s)"
    parts = [
        "# Evaluation", "",
        f"{runs}; final loss = mean over {spec.final_batches} batches after the last step; baselines' learning "
        f"rate picked per task (best mean final {spec.tune_on} loss over seeds) from {len(spec.learning_rates)} "
        f"values {min(spec.learning_rates, default=0):g}..{max(spec.learning_rates, default=0):g}.",
    ]
    if spec.baselines:
        parts.append(
            f"Speedup = budget / the step from which the {WINDOW}-step running mean of the training loss stays at "
            f"or below tuned {spec.reference}'s final training loss (mean of its last {WINDOW} steps) on the same "
            "task and seed; median and worst over runs; 'not reached' counts as 0. Tuned "
            f"{spec.reference}'s own row is the metric's noise floor (about 1x).")
    for label, setting in settings.items():
        kwargs = ", ".join(f"{k}={v}" for k, v in setting["family_kwargs"].items())
        parts += ["", f"## {label}: {setting['family']}({kwargs}), {setting['num_steps']} steps", ""]
        headers = ["optimizer", "learning rate", "final train loss (mean / median)", "final valid loss (mean)"]
        if spec.baselines:
            headers += [f"speedup vs tuned {spec.reference} (median)", "worst", "reached"]
        rows = []
        for name, entry in setting["optimizers"].items():
            train, valid = entry["final_train_loss"], entry["final_valid_loss"]
            row = [name, _rate_text(entry), f"{_number(train['mean'])} / {_number(train['median'])}", _number(valid["mean"])]
            if "speedup" in entry:
                speed = entry["speedup"]
                row += [_speedup_text(speed["median"]), _speedup_text(speed["min"]), f"{speed['reached']}/{speed['runs']}"]
            rows.append(row)
        parts.append(report.format_markdown_table(headers, rows))
    return "\n".join(parts) + "\n"


def _mean_curve(losses: np.ndarray) -> np.ndarray:
    """Returns the mean over every leading axis (seeds, tasks) of the finite losses at each step (NaN where none)."""
    losses = np.asarray(losses, np.float64)
    runs = np.where(np.isfinite(losses), losses, np.nan).reshape(-1, losses.shape[-1])
    counts = np.sum(np.isfinite(runs), axis=0)
    return np.where(counts > 0, np.nansum(runs, axis=0) / np.maximum(counts, 1), np.nan)


def _tag_part(text: str) -> str:
    return re.sub(r"[^-\w.]+", "_", text).strip("_") or "unnamed"


def write_tensorboard(folder: Path, summary: Dict[str, Any]) -> None:
    """Writes, per optimizer, one TensorBoard run under `folder` whose scalars `SETTING/train_loss` (and
    `SETTING/valid_loss`) are the mean curves over seeds and tasks against the inner step (updates done)."""
    shutil.rmtree(folder, ignore_errors=True)  # written whole each time, like evaluation.json
    runs: Dict[str, List[Tuple[str, evaluate.Curves, Sequence[int]]]] = {}
    for label, setting in summary["settings"].items():
        for name, entry in setting["optimizers"].items():
            runs.setdefault(name, []).append((label, entry["curves"], setting["valid_steps"]))
    used = set()
    for name, entries in runs.items():
        run_name = _tag_part(name)
        while run_name in used:
            run_name += "_"
        used.add(run_name)
        with tensorboard_lib.EventWriter(folder / run_name) as board:
            for label, curves, valid_steps in entries:
                train = _mean_curve(curves.train_losses)
                board.curve(f"{_tag_part(label)}/train_loss", train, np.arange(train.shape[-1]))
                if curves.valid_losses is not None and np.size(valid_steps):
                    board.curve(f"{_tag_part(label)}/valid_loss", _mean_curve(curves.valid_losses),
                                np.asarray(valid_steps))


def write_outputs(spec: Any, out: Path, summary: Dict[str, Any], tensorboard: str = "auto") -> None:
    """Writes evaluation.json (every selected curve), curves.png and table.md into `out`, and TensorBoard events
    into out/tensorboard/ when `tensorboard` ("auto": if tensorboardX is installed, "on", "off") says so."""
    settings_json = {}
    panels, valid_steps = {}, {}
    for label, setting in summary["settings"].items():
        entries = {}
        for name, entry in setting["optimizers"].items():
            entries[name] = {k: v for k, v in entry.items() if k != "curves"}
            entries[name]["curves"] = curves_json(entry["curves"])
        settings_json[label] = {**{k: v for k, v in setting.items() if k != "optimizers"}, "optimizers": entries}
        title = f"{label} ({setting['num_steps']} steps)"
        panels[title] = {name: entry["curves"] for name, entry in setting["optimizers"].items()}
        valid_steps[title] = np.asarray(setting["valid_steps"])
    result = {"arguments": json.loads(json.dumps(dataclasses.asdict(spec))), "curve_axes": "[seeds, tasks, steps]",
              "speedup_definition": SPEEDUP_DEFINITION, "settings": settings_json}
    write_text_atomic(out / RESULT_FILE, json.dumps(result))
    write_text_atomic(out / TABLE_FILE, summary["table"])
    report.plot_grid(panels, out / PLOT_FILE, valid_steps, max_columns=PLOT_COLUMNS)
    if tensorboard_lib.enabled(tensorboard):
        write_tensorboard(out / tensorboard_lib.FOLDER, summary)
