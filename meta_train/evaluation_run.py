"""Evaluation runs: learned optimizers against per-task tuned baselines, resumable one (setting, optimizer, seed) unit at a time.

An evaluation crosses settings (a task family and a step budget), optimizers (export files or
`pretrained:NAME`) and baselines (hand-designed optimizers whose learning rate is picked per
task from a grid), all trained on the same held-out tasks under several seeds. Each finished
unit is written atomically to OUT/units/SETTING/OPTIMIZER/seedN.json, so a rerun with the same
arguments (OUT/arguments.json) skips it. Outputs: OUT/evaluation.json (every curve),
OUT/curves.png and OUT/table.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

import lopt
import tasks
from meta_train import evaluate, report
from meta_train.files import write_text_atomic
from meta_train.run import prepare_workdir, tree_digest

ARGUMENTS_FILE = "arguments.json"
RESULT_FILE = "evaluation.json"
PLOT_FILE = "curves.png"
TABLE_FILE = "table.md"
DEFAULT_LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
BASELINE_ALIASES = {"sgd+momentum": "sgd_momentum"}
PRETRAINED_PREFIX = "pretrained:"
WINDOW = 10
NAMED_TASKS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "digits_mlp": ("mlp_image", {"dataset": "digits", "hidden": [32, 32]}),
    "fmnist8_mlp": ("mlp_image", {"dataset": "fashion_mnist", "image_size": 8, "hidden": [32, 32]}),
    "fmnist8_mlp_wide": ("mlp_image", {"dataset": "fashion_mnist", "image_size": 8, "hidden": [128, 128]}),
    "fmnist8_mlp_deep": ("mlp_image", {"dataset": "fashion_mnist", "image_size": 8, "hidden": [32, 32, 32, 32]}),
    "mnist8_mlp": ("mlp_image", {"dataset": "mnist", "image_size": 8, "hidden": [32, 32]}),
    "cifar8_mlp": ("mlp_image", {"dataset": "cifar10", "image_size": 8, "hidden": [32, 32]}),
    "quadratic10": ("quadratic", {"dim": 10}),
}


class EvaluationError(ValueError):
    """An evaluation was asked for with impossible arguments, or its output folder holds another evaluation."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """One task family (registered name and constructor arguments) evaluated for `num_steps` inner steps."""

    label: str
    family: str
    family_kwargs: Dict[str, Any]
    num_steps: int


@dataclasses.dataclass(frozen=True)
class Spec:
    """Everything an evaluation run depends on; equal specs (and optimizer files) resume the same run."""

    optimizers: Tuple[str, ...]
    settings: Tuple[Setting, ...]
    baselines: Tuple[str, ...] = ("adam",)
    learning_rates: Tuple[float, ...] = DEFAULT_LEARNING_RATES
    seeds: Tuple[int, ...] = (0,)
    num_tasks: int = 8
    task_seed: int = 10_000
    valid_every: int = 10
    valid_batches: int = 4
    final_batches: int = 8
    tune_on: str = "train"
    reference: str = "adam"
    data_dir: str = ""


def named_setting(name: str, num_steps: int, label: Optional[str] = None) -> Setting:
    """Returns the setting of a named task (see NAMED_TASKS)."""
    if name not in NAMED_TASKS:
        raise EvaluationError(f"unknown named task {name!r}; known: {', '.join(sorted(NAMED_TASKS))}")
    family, kwargs = NAMED_TASKS[name]
    return Setting(label or name, family, dict(kwargs), int(num_steps))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "unnamed"


def unique_labels(names: Sequence[str]) -> List[str]:
    """Returns path-safe labels for `names`, numbering repeats (`a`, `a-2`, ...)."""
    labels: List[str] = []
    for name in names:
        label, count = _slug(name), 2
        while label in labels:
            label = f"{_slug(name)}-{count}"
            count += 1
        labels.append(label)
    return labels


def optimizer_label(source: str) -> str:
    """Returns the display name of an optimizer source: the pretrained name or the export file's stem."""
    if source.startswith(PRETRAINED_PREFIX):
        return source[len(PRETRAINED_PREFIX):]
    return Path(source).stem


def canonical_baseline(name: str) -> str:
    """Returns the registered name of baseline `name` (accepts 'sgd+momentum')."""
    return BASELINE_ALIASES.get(name, name)


def _hand_designed_names() -> List[str]:
    found, pending = set(), [lopt.HandDesigned]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        found.add(cls.name)
    return [name for name in lopt.registered_names() if name in found]


def check_spec(spec: Spec) -> None:
    """Raises EvaluationError (one line) for impossible values in `spec`."""
    known = _hand_designed_names()
    for name in spec.baselines:
        if name not in known:
            raise EvaluationError(f"unknown baseline {name!r}; choose from {', '.join(known)} (or sgd+momentum)")
    checks = [
        (bool(spec.settings), "no task family or named task to evaluate on"),
        (bool(spec.optimizers) or bool(spec.baselines), "nothing to evaluate: give optimizers or baselines"),
        (len(set(spec.baselines)) == len(spec.baselines), f"baselines repeat: {', '.join(spec.baselines)}"),
        (bool(spec.learning_rates) or not spec.baselines, "baselines need at least one learning rate"),
        (all(lr > 0 and np.isfinite(lr) for lr in spec.learning_rates), "learning rates must be positive"),
        (bool(spec.seeds) and all(s >= 0 for s in spec.seeds), "seeds must be a non-empty list of integers >= 0"),
        (len(set(spec.seeds)) == len(spec.seeds), f"seeds repeat: {list(spec.seeds)}"),
        (spec.num_tasks >= 1, f"num_tasks must be >= 1, got {spec.num_tasks}"),
        (all(s.num_steps >= 1 for s in spec.settings), "num_steps must be >= 1"),
        (spec.valid_every >= 0, f"valid_every must be >= 0, got {spec.valid_every}"),
        (spec.valid_batches >= 1 and spec.final_batches >= 1, "valid_batches and final_batches must be >= 1"),
        (spec.tune_on in ("train", "valid"), f"tune_on must be 'train' or 'valid', got {spec.tune_on!r}"),
        (not spec.baselines or spec.reference in spec.baselines,
         f"reference {spec.reference!r} must be one of the baselines ({', '.join(spec.baselines)})"),
        (len({s.label for s in spec.settings}) == len(spec.settings), "settings need distinct labels"),
    ]
    for ok, message in checks:
        if not ok:
            raise EvaluationError(message)


def load_optimizer(source: str) -> lopt.LoadedOptimizer:
    """Loads an export file, or a shipped one named `pretrained:NAME`; one-line errors."""
    if source.startswith(PRETRAINED_PREFIX):
        from lopt import pretrained

        return pretrained.load(source[len(PRETRAINED_PREFIX):])
    return lopt.load(source)


def optimizer_digest(loaded: lopt.LoadedOptimizer) -> str:
    """Returns a SHA-256 of what an evaluation of `loaded` depends on: its name, constructor arguments and meta-params."""
    digest = hashlib.sha256(json.dumps([loaded.name, loaded.config], sort_keys=True).encode())
    digest.update(tree_digest(loaded.meta_params).encode())
    return digest.hexdigest()


def build_family(setting: Setting, data_dir: str = "") -> tasks.TaskFamily:
    """Returns the task family of `setting`, passing `data_dir` on if the family takes one."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in setting.family_kwargs.items()}
    if data_dir and "data_dir" not in kwargs and tasks.accepts_argument(setting.family, "data_dir"):
        kwargs["data_dir"] = data_dir
    try:
        return tasks.get(setting.family, **kwargs)
    except (TypeError, ValueError) as err:
        raise EvaluationError(f"setting {setting.label!r}: {err}") from None


def spec_arguments(spec: Spec, digests: Dict[str, str]) -> Dict[str, Any]:
    """Returns the JSON identity of an evaluation: its spec and a digest of every optimizer (see optimizer_digest)."""
    arguments = json.loads(json.dumps(dataclasses.asdict(spec)))
    arguments["optimizer_digests"] = digests
    return arguments


def _claim(out: Path, arguments: Dict[str, Any]) -> None:
    saved = out / ARGUMENTS_FILE
    if saved.exists():
        try:
            previous = json.loads(saved.read_text())
        except ValueError:
            previous = None
        if previous != arguments:
            changed = sorted(k for k in set(arguments) | set(previous or {}) if (previous or {}).get(k) != arguments.get(k))
            raise EvaluationError(
                f"{out} holds an evaluation with different arguments ({', '.join(changed) or 'unreadable'}); "
                "use a new output folder or the same arguments"
            )
    write_text_atomic(saved, json.dumps(arguments, indent=2))


def _to_json(array: np.ndarray) -> Any:
    array = np.asarray(array, np.float64)
    rounded = [float(f"{x:.6g}") if np.isfinite(x) else None for x in array.reshape(-1)]
    return np.asarray(rounded, object).reshape(array.shape).tolist() if array.ndim else rounded[0]


def _from_json(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def _curves_json(curves: evaluate.Curves) -> Dict[str, Any]:
    return {field: _to_json(getattr(curves, field)) for field in evaluate.Curves._fields}


def _curves_from_json(data: Dict[str, Any]) -> evaluate.Curves:
    return evaluate.Curves(*(_from_json(data[field]) for field in evaluate.Curves._fields))


def _stack(curves: Sequence[evaluate.Curves]) -> evaluate.Curves:
    return evaluate.Curves(*(np.stack(parts) for parts in zip(*curves)))


@dataclasses.dataclass
class _Unit:
    setting: Setting
    label: str
    kind: str
    seed: int
    path: Path


def _units(spec: Spec, out: Path, learned_labels: Sequence[str]) -> List[_Unit]:
    units = []
    for setting in spec.settings:
        members = [(label, "learned") for label in learned_labels] + [(b, "baseline") for b in spec.baselines]
        for label, kind in members:
            for seed in spec.seeds:
                path = out / "units" / _slug(setting.label) / f"{kind}-{label}" / f"seed{seed}.json"
                units.append(_Unit(setting, label, kind, seed, path))
    return units


def _read_unit(unit: _Unit) -> Optional[evaluate.Curves]:
    try:
        data = json.loads(unit.path.read_text())
        if (data["setting"], data["optimizer"], data["seed"]) != (unit.setting.label, unit.label, unit.seed):
            return None
        return _curves_from_json(data["curves"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_unit(unit: _Unit, spec: Spec, family: tasks.TaskFamily, optimizer: Any, task_keys: Any) -> evaluate.Curves:
    options = {"seed": unit.seed, "valid_every": spec.valid_every, "valid_batches": spec.valid_batches}
    steps, final = unit.setting.num_steps, spec.final_batches
    if unit.kind == "learned":
        return evaluate.train_curves(family, optimizer.optimizer, optimizer.meta_params, task_keys, steps, final, **options)
    grid = evaluate.learning_rate_grid(optimizer, spec.learning_rates)
    return evaluate.grid_curves(family, optimizer, grid, task_keys, steps, final, **options)


def run_evaluation(spec: Spec, out: str | Path, *, show_progress: bool = True) -> Dict[str, Any]:
    """Runs (or resumes) the evaluation `spec` into folder `out`; returns the summary (no curves) and writes the outputs."""
    check_spec(spec)
    labels = unique_labels([optimizer_label(s) for s in spec.optimizers])
    loaded = {label: load_optimizer(source) for label, source in zip(labels, spec.optimizers)}
    digests = {label: optimizer_digest(optimizer) for label, optimizer in loaded.items()}
    families = {s.label: build_family(s, spec.data_dir) for s in spec.settings}
    baselines = {name: lopt.get(name) for name in spec.baselines}
    out = prepare_workdir(out)
    _claim(out, spec_arguments(spec, digests))
    task_keys = evaluate.held_out_task_keys(spec.task_seed, spec.num_tasks)

    units = _units(spec, out, labels)
    results: Dict[Tuple[str, str, int], evaluate.Curves] = {}
    for unit in units:
        if (found := _read_unit(unit)) is not None:
            results[(unit.setting.label, unit.label, unit.seed)] = found
    progress = tqdm(total=len(units), initial=len(results), desc="evaluate", unit="run", disable=not show_progress,
                    dynamic_ncols=True, file=sys.stderr)
    try:
        for unit in units:
            key = (unit.setting.label, unit.label, unit.seed)
            if key in results:
                continue
            progress.set_postfix_str(f"{unit.setting.label} / {unit.label} / seed {unit.seed}")
            optimizer = loaded[unit.label] if unit.kind == "learned" else baselines[unit.label]
            curves = _run_unit(unit, spec, families[unit.setting.label], optimizer, task_keys)
            unit.path.parent.mkdir(parents=True, exist_ok=True)
            payload = {"setting": unit.setting.label, "optimizer": unit.label, "seed": unit.seed,
                       "curves": _curves_json(curves)}
            write_text_atomic(unit.path, json.dumps(payload))
            results[key] = _curves_from_json(payload["curves"])
            progress.update(1)
    finally:
        progress.close()
    summary = aggregate(spec, labels, results)
    write_outputs(spec, out, summary)
    return {"out": str(out), "table": summary["table"], "settings": {
        label: {name: {k: v for k, v in entry.items() if k not in ("curves", "grid_final_losses")}
                for name, entry in setting["optimizers"].items()}
        for label, setting in summary["settings"].items()}}


def _finite_stats(values: np.ndarray) -> Dict[str, Optional[float]]:
    values = np.asarray(values, np.float64).reshape(-1)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"mean": None, "median": None, "num_nonfinite": int(values.size)}
    return {"mean": float(np.mean(finite)), "median": float(np.median(finite)),
            "num_nonfinite": int(values.size - finite.size)}


def _speedup_summary(per_run: np.ndarray) -> Dict[str, Any]:
    flat = per_run.reshape(-1)
    return {"per_run": _to_json(per_run), "median": float(np.median(flat)), "min": float(np.min(flat)),
            "reached": int(np.sum(flat > 0)), "runs": int(flat.size)}


def aggregate(spec: Spec, learned_labels: Sequence[str], results: Dict[Tuple[str, str, int], evaluate.Curves]) -> Dict[str, Any]:
    """Combines unit results: picks baseline learning rates per task (over seeds), computes speedups and the table."""
    settings = {}
    for setting in spec.settings:
        entries: Dict[str, Dict[str, Any]] = {}
        for label in learned_labels:
            curves = _stack([results[(setting.label, label, s)] for s in spec.seeds])
            entries[label] = {"kind": "learned", "curves": curves}
        for name in spec.baselines:
            per_rate = _stack([results[(setting.label, name, s)] for s in spec.seeds])  # [seeds, rates, tasks, ...]
            tuned_on = per_rate.final_losses if spec.tune_on == "train" else per_rate.final_valid_losses
            best = evaluate.best_rate_per_task(tuned_on)
            tasks_index = np.arange(best.shape[0])
            entries[f"{name} (tuned lr)"] = {
                "kind": "baseline",
                "curves": evaluate.Curves(*(x[:, best, tasks_index] for x in per_rate)),
                "learning_rates": [float(spec.learning_rates[i]) for i in best],
                "num_at_grid_edge": int(np.sum((best == 0) | (best == len(spec.learning_rates) - 1))),
                "grid_final_losses": _to_json(per_rate.final_losses),
            }
        reference = entries.get(f"{spec.reference} (tuned lr)")
        for entry in entries.values():
            curves = entry["curves"]
            entry["final_train_loss"] = _finite_stats(curves.final_losses)
            entry["final_valid_loss"] = _finite_stats(curves.final_valid_losses)
            if reference is not None:
                entry["speedup"] = _speedup_summary(
                    evaluate.speedups(curves.train_losses, reference["curves"].train_losses, WINDOW))
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
    if entry["kind"] != "baseline":
        return "-"
    rates = np.asarray(entry["learning_rates"])
    text = f"{np.median(rates):.3g} ({rates.min():.3g}..{rates.max():.3g})"
    return text + (f", {entry['num_at_grid_edge']} at grid edge" if entry["num_at_grid_edge"] else "")


def format_tables(spec: Spec, settings: Dict[str, Dict[str, Any]]) -> str:
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
            f"Speedup = budget / first step at which the {WINDOW}-step running mean of the training loss reaches "
            f"tuned {spec.reference}'s final training loss (mean of its last {WINDOW} steps) on the same task and "
            "seed; median and worst over runs; 'not reached' counts as 0.")
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


def write_outputs(spec: Spec, out: Path, summary: Dict[str, Any]) -> None:
    """Writes evaluation.json (every selected curve), curves.png and table.md into `out`."""
    settings_json = {}
    panels, valid_steps = {}, {}
    for label, setting in summary["settings"].items():
        entries = {}
        for name, entry in setting["optimizers"].items():
            entries[name] = {k: v for k, v in entry.items() if k != "curves"}
            entries[name]["curves"] = _curves_json(entry["curves"])
        settings_json[label] = {**{k: v for k, v in setting.items() if k != "optimizers"}, "optimizers": entries}
        title = f"{label} ({setting['num_steps']} steps)"
        panels[title] = {name: entry["curves"] for name, entry in setting["optimizers"].items()}
        valid_steps[title] = np.asarray(setting["valid_steps"])
    result = {"arguments": json.loads(json.dumps(dataclasses.asdict(spec))), "curve_axes": "[seeds, tasks, steps]",
              "settings": settings_json}
    write_text_atomic(out / RESULT_FILE, json.dumps(result))
    write_text_atomic(out / TABLE_FILE, summary["table"])
    report.plot_grid(panels, out / PLOT_FILE, valid_steps)
