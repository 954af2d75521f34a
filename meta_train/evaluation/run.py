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

import jax
import numpy as np
from tqdm import tqdm

import lopt
import tasks
from meta_train import tensorboard as tensorboard_lib
from meta_train.evaluation import curves as evaluate
from meta_train.evaluation import summary
from meta_train.evaluation.summary import PLOT_FILE, RESULT_FILE, TABLE_FILE  # noqa: F401 - re-exported
from meta_train.files import write_text_atomic
from meta_train.files import EXPORT_FILE, prepare_workdir, tree_digest
from meta_train.trainer import numbered_labels

ARGUMENTS_FILE = "arguments.json"
DEFAULT_LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
BASELINE_ALIASES = {"sgd+momentum": "sgd_momentum"}
PRETRAINED_PREFIX = "pretrained:"
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
    tune_learned: bool = False


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
    return numbered_labels([_slug(name) for name in names])


def optimizer_label(source: str) -> str:
    """Returns the display name of an optimizer source: the pretrained name, the export file's stem, or for a
    run's own export (WORKDIR/optimizer.lopt, which every run writes) the run folder's name."""
    if source.startswith(PRETRAINED_PREFIX):
        return source[len(PRETRAINED_PREFIX):]
    path = Path(source)
    if path.name == EXPORT_FILE and path.parent.name:
        return path.parent.name
    return path.stem


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
    """Returns the task family of `setting`, built as meta-training builds one (`meta_train.build.build_task_family`)."""
    from meta_train.build import build_task_family
    from meta_train.config import ConfigError

    try:
        return build_task_family(setting.family, setting.family_kwargs, data_dir=data_dir,
                                 where=f"setting {setting.label!r}")
    except ConfigError as err:
        raise EvaluationError(str(err)) from None


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


@dataclasses.dataclass
class _Unit:
    setting: Setting
    label: str
    kind: str
    seed: int
    path: Path


def tuned_learned_labels(spec: Spec, loaded: Dict[str, lopt.LoadedOptimizer]) -> List[str]:
    """Returns the learned optimizers whose learning rate `spec` tunes per task (those that take one, if asked)."""
    return [label for label, item in loaded.items() if spec.tune_learned and evaluate.LearningRateSweep.accepts(item)]


def _units(spec: Spec, out: Path, learned_labels: Sequence[str], tuned_labels: Sequence[str] = ()) -> List[_Unit]:
    units = []
    for setting in spec.settings:
        members = ([(label, "learned") for label in learned_labels] + [(label, "learned_lr") for label in tuned_labels]
                   + [(b, "baseline") for b in spec.baselines])
        for label, kind in members:
            for seed in spec.seeds:
                path = out / "units" / _slug(setting.label) / f"{kind}-{label}" / f"seed{seed}.json"
                units.append(_Unit(setting, label, kind, seed, path))
    return units


def _read_unit(unit: _Unit) -> Optional[evaluate.Curves]:
    try:
        data = json.loads(unit.path.read_text())
        if (data["setting"], data["optimizer"], data["seed"], data.get("kind", unit.kind)) != (
                unit.setting.label, unit.label, unit.seed, unit.kind):
            return None
        return summary.curves_from_json(data["curves"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _run_unit(unit: _Unit, spec: Spec, family: tasks.TaskFamily, optimizer: Any, task_keys: Any) -> evaluate.Curves:
    options = {"seed": unit.seed, "valid_every": spec.valid_every, "valid_batches": spec.valid_batches}
    steps, final = unit.setting.num_steps, spec.final_batches
    if unit.kind == "learned":
        return evaluate.train_curves(family, optimizer.optimizer, optimizer.meta_params, task_keys, steps, final, **options)
    grid = evaluate.learning_rate_grid(optimizer, spec.learning_rates)
    return evaluate.grid_curves(family, optimizer, grid, task_keys, steps, final, **options)


Results = Dict[Tuple[str, str, int], evaluate.Curves]
LEARNING_RATE_SWEEP_SUFFIX = summary.LEARNING_RATE_SWEEP_SUFFIX


def result_key(unit: _Unit) -> Tuple[str, str, int]:
    """Returns the results key of a unit: (setting, optimizer label, seed); a learned optimizer's learning-rate sweep
    is keyed under its label plus LEARNING_RATE_SWEEP_SUFFIX."""
    label = unit.label + LEARNING_RATE_SWEEP_SUFFIX if unit.kind == "learned_lr" else unit.label
    return (unit.setting.label, label, unit.seed)


def run_units(spec: Spec, out: str | Path, *, show_progress: bool = True) -> Tuple[Path, List[str], Results]:
    """Runs (or resumes) every (setting, optimizer, seed) unit of `spec` in folder `out`.

    Returns the folder, the learned optimizers' labels and the curves keyed by (setting label,
    optimizer label, seed); a baseline's curves cover its whole learning-rate grid.
    """
    check_spec(spec)
    labels = unique_labels([optimizer_label(s) for s in spec.optimizers])
    loaded = {label: load_optimizer(source) for label, source in zip(labels, spec.optimizers)}
    digests = {label: optimizer_digest(optimizer) for label, optimizer in loaded.items()}
    families = {s.label: build_family(s, spec.data_dir) for s in spec.settings}
    baselines = {name: lopt.get(name) for name in spec.baselines}
    tuned = tuned_learned_labels(spec, loaded)
    sweeps = {label: evaluate.LearningRateSweep(loaded[label]) for label in tuned}
    out = prepare_workdir(out)
    _claim(out, spec_arguments(spec, digests))
    task_keys = evaluate.held_out_task_keys(spec.task_seed, spec.num_tasks)

    units = _units(spec, out, labels, tuned)
    results: Results = {}
    for unit in units:
        if (found := _read_unit(unit)) is not None:
            results[result_key(unit)] = found
    progress = tqdm(total=len(units), initial=len(results), desc="evaluate", unit="run", disable=not show_progress,
                    dynamic_ncols=True, file=sys.stderr)
    try:
        previous_setting = None
        for unit in units:
            key = result_key(unit)
            if key in results:
                continue
            if previous_setting is not None and unit.setting.label != previous_setting:
                # Compiled programs of a finished setting are not needed again; a 9-task suite with 6 optimizers
                # exhausted 23 GB of memory while keeping them all.
                jax.clear_caches()
            previous_setting = unit.setting.label
            progress.set_postfix_str(f"{unit.setting.label} / {unit.label} / seed {unit.seed}")
            optimizer = {"learned": loaded, "learned_lr": sweeps, "baseline": baselines}[unit.kind][unit.label]
            curves = _run_unit(unit, spec, families[unit.setting.label], optimizer, task_keys)
            unit.path.parent.mkdir(parents=True, exist_ok=True)
            payload = {"setting": unit.setting.label, "optimizer": unit.label, "seed": unit.seed, "kind": unit.kind,
                       "curves": summary.curves_json(curves)}
            write_text_atomic(unit.path, json.dumps(payload))
            results[key] = summary.curves_from_json(payload["curves"])
            progress.update(1)
    finally:
        progress.close()
    return out, labels, results


def check_tensorboard(setting: str, option: str = "tensorboard") -> None:
    """Raises EvaluationError unless `setting` is one of tensorboard.SETTINGS and, when "on", tensorboardX is installed."""
    if setting not in tensorboard_lib.SETTINGS:
        raise EvaluationError(f"{option} must be one of {', '.join(tensorboard_lib.SETTINGS)}, got {setting!r}")
    if setting == "on" and not tensorboard_lib.available():
        raise EvaluationError(tensorboard_lib.missing_message(f"{option} on"))


def run_evaluation(spec: Spec, out: str | Path, *, show_progress: bool = True,
                   tensorboard: str = "auto") -> Dict[str, Any]:
    """Runs (or resumes) the evaluation `spec` into folder `out`; returns the summary (no curves) and writes the outputs.

    `tensorboard` ("auto": when tensorboardX is installed, "on", "off") writes mean curves as TensorBoard events
    into out/tensorboard/ too.
    """
    check_tensorboard(tensorboard)
    out, labels, results = run_units(spec, out, show_progress=show_progress)
    combined = summary.aggregate(spec, labels, results)
    summary.write_outputs(spec, out, combined, tensorboard)
    return {"out": str(out), "table": combined["table"], "settings": {
        label: {name: {k: v for k, v in entry.items() if k not in ("curves", "grid_final_losses")}
                for name, entry in setting["optimizers"].items()}
        for label, setting in combined["settings"].items()}}
