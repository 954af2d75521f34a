"""Config files for meta-training runs: the schema with its defaults, presets, loading, command-line overrides
and the checks of the config's own shape.

A config file is a Python file defining `get_config() -> ml_collections.ConfigDict`.
Overrides look like `--config.meta_train.num_tasks=16`; an unknown key or a value of the
wrong type is a one-line ConfigError, raised before anything is compiled. Building the run's
objects from a config is `meta_train.build`; setting up the process (devices, XLA flags,
multi-host) is `meta_train.launch`.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import ml_collections

import tasks
from meta_train import tensorboard as tensorboard_lib
from meta_train.regularizer import MetaRegularizer
from tasks.reparameterize import RANGES as REPARAMETERIZE_RANGES
from tasks.reparameterize import check_choices as check_reparameterize_choices

TASK_MAPS = ("vmap", "map")
PARALLEL_MODES = ("none", "shard_map", "pmap")


class ConfigError(ValueError):
    """A config file or override is unreadable, names an unknown key, or holds an invalid value."""


# Keys that moved; a config or override still using one gets a one-line error naming the new spelling.
MOVED_KEYS = {
    "meta_train.trunc_length": "meta_train.estimator.kwargs.trunc_length",
    "meta_train.std": "meta_train.estimator.kwargs.std",
    "meta_train.loss_type": "meta_train.estimator.kwargs.loss_type (with meta_train.estimator.name='full_horizon_es')",
    "meta_train.evosax_strategy": "meta_train.estimator.kwargs.strategy (with meta_train.estimator.name='evosax')",
    "meta_train.horizon_length": "meta_train.horizon.kwargs.length (with meta_train.horizon.name='constant'); "
                                "full-horizon ES takes meta_train.estimator.kwargs.horizon_length too",
    "meta_train.horizon_min": "meta_train.horizon.kwargs.low (with meta_train.horizon.name='log_uniform')",
    "meta_train.horizon_max": "meta_train.horizon.kwargs.high (with meta_train.horizon.name='log_uniform')",
    "meta_train.meta_lr_decay_steps": "meta_train.meta_lr_schedule.kwargs.decay_steps "
                                      "(with meta_train.meta_lr_schedule.name='cosine')",
    "meta_train.meta_lr_final_fraction": "meta_train.meta_lr_schedule.kwargs.final_fraction "
                                         "(with meta_train.meta_lr_schedule.name='cosine')",
}
# Keys that were a name and are now a group {"name": ..., "kwargs": {...}} selecting from a registry.
NAMED_GROUPS = ("meta_train.estimator", "meta_train.horizon", "meta_train.meta_lr_schedule")


def _named_group(name: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"name": name, "kwargs": ml_collections.ConfigDict()})


def moved_key_error(dotted: str) -> "ConfigError":
    """Returns the one-line error for a key that moved (`dotted` without the `config.` prefix)."""
    return ConfigError(f"config key {dotted} moved: set {MOVED_KEYS[dotted]} instead")


def base_config() -> ml_collections.ConfigDict:
    """Returns the full set of run settings with defaults; config files start from this and change values."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data_dir = ""
    config.compile_cache = "workdir"
    config.xla_cpu_loop_unrolling = True
    config.task = ml_collections.ConfigDict(
        {"family": "mlp_image", "kwargs": ml_collections.ConfigDict(), "mixture": ml_collections.ConfigDict(),
         "reparameterize": ml_collections.ConfigDict({"levels": (), "ranges": tuple(REPARAMETERIZE_RANGES)})}
    )
    config.optimizer = ml_collections.ConfigDict({"name": "small_fc_lopt", "kwargs": ml_collections.ConfigDict()})
    config.meta_train = ml_collections.ConfigDict(
        {
            "num_tasks": 8,
            "estimator": _named_group("pes"),
            "horizon": _named_group("constant"),
            "meta_loss": "train",
            "max_meta_loss": 10.0,
            "meta_learning_rate": 1e-3,
            "meta_lr_schedule": _named_group("constant"),
            "grad_clip": 1.0,
            "num_steps": 1000,
            "task_map": "vmap",
            "phases": (),
            "parallel": "none",
            "num_devices": 0,
            "host_devices": 0,
            "accumulate": 1,
            # L_total = L_meta + l2_weight * Omega_l2 + smoothness_weight * Omega_smooth (meta_train.regularizer);
            # all weights 0: off.
            "regularizer": ml_collections.ConfigDict({
                "l2_weight": 0.0, "l2_from_init": True, "smoothness_weight": 0.0, "smoothness_scale": 0.1,
                "smoothness_samples": 64,
            }),
        }
    )
    config.distributed = ml_collections.ConfigDict(
        {"enabled": False, "coordinator_address": "", "num_processes": 0, "process_id": -1}
    )
    config.checkpoint = ml_collections.ConfigDict({"every": 100, "keep": 3})
    config.log_every = 10
    # TensorBoard events in WORKDIR/tensorboard: mode "auto" (when tensorboardX is installed), "on" or "off";
    # meta-param histograms every histogram_every meta-steps (0: at each checkpoint).
    config.tensorboard = ml_collections.ConfigDict({"mode": "auto", "histogram_every": 0})
    config.eval = ml_collections.ConfigDict(
        {
            "enabled": True,
            "num_tasks": 8,
            "num_steps": 200,
            "seed": 10_000,
            "baseline": "adam",
            "learning_rates": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0),
            "final_batches": 8,
        }
    )
    return config


def quadratic_experiment(optimizer: str, **optimizer_kwargs: Any) -> ml_collections.ConfigDict:
    """Returns a config meta-training `optimizer` with PES on rotated 10-d quadratics (condition 1..1e4), horizon 100."""
    config = base_config()
    config.task.family = "quadratic"
    config.task.kwargs = ml_collections.ConfigDict({"dim": 10, "min_condition": 1.0, "max_condition": 1e4})
    _set_optimizer(config, optimizer, optimizer_kwargs)
    config.meta_train.horizon.kwargs.length = 100
    config.meta_train.meta_learning_rate = 3e-3
    config.meta_train.num_steps = 2000
    config.checkpoint.every = 250
    config.eval.num_tasks, config.eval.num_steps = 16, 100
    return config


def digits_mlp_experiment(optimizer: str, **optimizer_kwargs: Any) -> ml_collections.ConfigDict:
    """Returns a config meta-training `optimizer` with PES on 64-32-32-10 MLPs on scikit-learn's digits, horizon 200."""
    config = base_config()
    config.task.family = "mlp_image"
    config.task.kwargs = ml_collections.ConfigDict(
        {"dataset": "digits", "hidden": (32, 32), "image_size": 8, "batch_size": 128}
    )
    _set_optimizer(config, optimizer, optimizer_kwargs)
    config.meta_train.horizon.kwargs.length = 200
    config.meta_train.meta_learning_rate = 3e-3
    config.meta_train.num_steps = 1500
    config.checkpoint.every = 250
    config.eval.num_tasks, config.eval.num_steps = 16, 200
    return config


def _set_optimizer(config: ml_collections.ConfigDict, name: str, kwargs: dict) -> None:
    config.optimizer.name = name
    config.optimizer.kwargs = ml_collections.ConfigDict(kwargs)


def load_config(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """Returns `get_config()` of the Python config file at `path`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"lopt_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - report any error in the user's file on one line
        raise ConfigError(f"config file {path} failed to load: {_named_group_hint(err) or f'{type(err).__name__}: {err}'}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    try:
        config = module.get_config()
    except Exception as err:  # noqa: BLE001 - report any error in the user's get_config on one line
        hint = _named_group_hint(err)
        if not hint:
            raise
        raise ConfigError(f"config file {path}: {hint}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() in {path} must return an ml_collections.ConfigDict")
    return config


def _named_group_hint(err: Exception) -> str:
    """The new spelling, when `err` is ml_collections refusing a name assigned to a group that selects from a registry."""
    found = re.search(r"Could not override field '(\w+)'", str(err))
    if not found or f"meta_train.{found.group(1)}" not in NAMED_GROUPS:
        return ""
    key = f"meta_train.{found.group(1)}"
    return (f"config.{key} is a group now: set config.{key}.name = NAME and its settings in "
            f"config.{key}.kwargs")


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _coerce(value: Any, current: Any, dotted: str) -> Any:
    if current is None or isinstance(value, type(current)):
        return value
    if isinstance(current, bool):
        raise ConfigError(f"--config.{dotted} expects true/false (True or False), got {value!r}")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(current, tuple) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value,)
    raise ConfigError(
        f"--config.{dotted} expects a {type(current).__name__} (like {current!r}), got {type(value).__name__} {value!r}"
    )


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Sets `config.<dotted>` from the command-line text `text`, checking the key exists and the type fits."""
    parts = dotted.split(".")
    if dotted in MOVED_KEYS:
        raise moved_key_error(dotted)
    node = config
    for depth, part in enumerate(parts):
        known = list(node.keys())
        if part not in known and depth == len(parts) - 1 and depth > 0 and parts[depth - 1] == "kwargs":
            with node.unlocked():
                node[part] = _parse_value(text)  # constructor arguments are the user's: any name, checked when built
            return
        if part not in known:
            where = ".".join(parts[:depth]) or "config"
            close = difflib.get_close_matches(part, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys in {where}: {', '.join(sorted(known))}"
            raise ConfigError(f"unknown config key --config.{dotted}{hint}")
        if depth < len(parts) - 1:
            node = node[part]
            if not isinstance(node, ml_collections.ConfigDict):
                raise ConfigError(f"--config.{'.'.join(parts[:depth + 1])} is a value, not a group")
    leaf = parts[-1]
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        if dotted in NAMED_GROUPS:
            raise ConfigError(f"--config.{dotted} is a group now: set --config.{dotted}.name={text} "
                              f"and its settings as --config.{dotted}.kwargs.KEY=VALUE")
        raise ConfigError(f"--config.{dotted} is a group; set one of its keys: {', '.join(sorted(current.keys()))}")
    with node.unlocked():
        node[leaf] = _coerce(_parse_value(text), current, dotted)


def parse_overrides(config: ml_collections.ConfigDict, args: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies `--config.key=value` (or `--config.key value`) arguments to `config` and returns it.

    Overrides that choose another part of a registry group (`--config.meta_train.horizon.name=log_uniform`)
    are applied first and empty that group's `kwargs`, which belonged to the previous part; the
    group's `kwargs` overrides on the same command line then set the new part's arguments.
    """
    args = list(args)
    pairs = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--config."):
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --config.meta_train.num_tasks=16")
        body = arg[len("--config."):]
        if "=" in body:
            dotted, text = body.split("=", 1)
        elif i + 1 < len(args):
            dotted, text = body, args[i + 1]
            i += 1
        else:
            raise ConfigError(f"{arg} has no value")
        pairs.append((dotted, text))
        i += 1
    renames = [(d, t) for d, t in pairs if d.endswith(".name") and d[: -len(".name")] in NAMED_GROUPS]
    for dotted, text in renames:
        top, key = dotted[: -len(".name")].split(".")
        group = config[top][key]
        if isinstance(group, ml_collections.ConfigDict) and group.get("name") != _parse_value(text):
            group.kwargs = ml_collections.ConfigDict()
        apply_override(config, dotted, text)
    for dotted, text in pairs:
        if (dotted, text) not in renames:
            apply_override(config, dotted, text)
    return config


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_known_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str) -> None:
    for key in config.keys():
        if f"{prefix}{key}"[len("config."):] in MOVED_KEYS:
            raise moved_key_error(f"{prefix}{key}"[len("config."):])
        if key not in reference:
            close = difflib.get_close_matches(key, list(reference.keys()), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
        if key not in ("kwargs", "mixture") and isinstance(reference[key], ml_collections.ConfigDict):
            _check_known_keys(config[key], reference[key], f"{prefix}{key}.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for unknown keys or impossible values anywhere in `config`."""
    _check_known_keys(config, base_config(), "config.")
    reparameterize_choices(config.task.reparameterize, "config.task.reparameterize")
    _require(isinstance(config.xla_cpu_loop_unrolling, bool),
             f"xla_cpu_loop_unrolling must be True or False, got {config.xla_cpu_loop_unrolling!r}")
    mt = config.meta_train
    for key in NAMED_GROUPS:
        group = config[key.split(".")[0]][key.split(".")[1]]
        _require(isinstance(group.get("name"), str) and isinstance(group.get("kwargs"), ml_collections.ConfigDict),
                 f"config.{key} must hold a 'name' and a 'kwargs' group")
    _require(mt.parallel in PARALLEL_MODES, f"meta_train.parallel must be one of {PARALLEL_MODES}, got {mt.parallel!r}")
    _require(mt.num_devices >= 0, f"meta_train.num_devices must be >= 0 (0 = all visible), got {mt.num_devices}")
    _require(mt.host_devices >= -1,
             f"meta_train.host_devices must be -1 (one per core), 0 (leave as is) or a count, got {mt.host_devices}")
    _require(mt.host_devices == 0 or mt.parallel != "none",
             f"meta_train.host_devices={mt.host_devices} splits the CPU into devices for meta_train.parallel="
             "'shard_map' (or 'pmap'); set it, or host_devices=0")
    _require(mt.task_map in TASK_MAPS, f"meta_train.task_map must be one of {TASK_MAPS}, got {mt.task_map!r}")
    _require(mt.meta_loss in ("train", "valid"), f"meta_train.meta_loss must be 'train' or 'valid', got {mt.meta_loss!r}")
    for key in ("num_tasks", "num_steps"):
        _require(int(mt[key]) >= 1, f"meta_train.{key} must be >= 1, got {mt[key]}")
    for key in ("meta_learning_rate", "grad_clip", "max_meta_loss"):
        _require(float(mt[key]) > 0 and math.isfinite(float(mt[key])), f"meta_train.{key} must be positive, got {mt[key]}")
    _require(mt.accumulate >= 1, f"meta_train.accumulate must be >= 1, got {mt.accumulate}")
    regularizer_settings(config)
    parse_phases(mt.phases, mt.num_steps)
    _require(config.checkpoint.every >= 1 and config.checkpoint.keep >= 1, "checkpoint.every and checkpoint.keep must be >= 1")
    _require(config.log_every >= 1, f"log_every must be >= 1, got {config.log_every}")
    _require(config.tensorboard.mode in tensorboard_lib.SETTINGS,
             f"tensorboard.mode must be one of {tensorboard_lib.SETTINGS}, got {config.tensorboard.mode!r}")
    _require(config.tensorboard.histogram_every >= 0,
             f"tensorboard.histogram_every must be >= 0 (0: at each checkpoint), got {config.tensorboard.histogram_every}")
    _require(config.tensorboard.mode != "on" or tensorboard_lib.available(),
             tensorboard_lib.missing_message("tensorboard.mode='on'"))
    if config.eval.enabled:
        _require(config.eval.num_tasks >= 1 and config.eval.num_steps >= 1, "eval.num_tasks and eval.num_steps must be >= 1")
        _require(len(config.eval.learning_rates) >= 1, "eval.learning_rates must list at least one learning rate")
        _require(all(lr > 0 for lr in config.eval.learning_rates), "eval.learning_rates must be positive")


def regularizer_settings(config: ml_collections.ConfigDict) -> MetaRegularizer:
    """Returns the MetaRegularizer `config.meta_train.regularizer` describes; a bad value is a one-line ConfigError."""
    try:
        return MetaRegularizer(**config.meta_train.regularizer.to_dict())
    except ValueError as err:
        raise ConfigError(f"config.meta_train.regularizer.{err}") from None


def parse_phases(phases: Sequence[str], num_steps: int) -> List[Tuple[str, int]]:
    """Returns [(phase, first meta-step)] from "name:steps" entries; the last phase runs to num_steps.

    An empty `phases` is one phase, "all", over the whole run.
    """
    if not phases:
        return [("all", 0)]
    schedule, start = [], 0
    for entry in phases:
        name, _, steps = str(entry).partition(":")
        _require(name != "" and steps.isdigit() and int(steps) >= 1,
                 f"meta_train.phases entries look like 'name:steps' (e.g. 'mlp:1000'), got {entry!r}")
        schedule.append((name, start))
        start += int(steps)
    _require(start - int(steps) < num_steps,
             f"meta_train.phases start their last phase at meta-step {start - int(steps)}, "
             f"not before meta_train.num_steps ({num_steps})")
    return schedule


def phase_at(schedule: Sequence[Tuple[str, int]], step: int) -> str:
    """Returns the name of the phase that meta-step `step` (0-based) belongs to."""
    current = schedule[0][0]
    for name, start in schedule:
        if step >= start:
            current = name
    return current


def reparameterize_choices(group: Any, where: str) -> Tuple[Tuple[str, ...], Tuple[str, ...]] | None:
    """Returns the (levels, ranges) a `reparameterize` config group selects, or None when its levels are empty (off)."""
    _require(isinstance(group, ml_collections.ConfigDict) and not set(group.keys()) - {"levels", "ranges"},
             f"{where} must be a group with 'levels' and optionally 'ranges'")
    levels = group.get("levels", ())
    if not levels:
        return None
    try:
        return check_reparameterize_choices(levels, group.get("ranges", tuple(REPARAMETERIZE_RANGES)))
    except tasks.TaskError as err:
        raise ConfigError(f"{where}: {err}") from None



# Names that moved to meta_train.build and meta_train.launch; the old paths work for one release.
_MOVED_NAMES = {
    "build": "meta_train.build", "build_family": "meta_train.build", "build_optimizer": "meta_train.build",
    "build_horizon": "meta_train.build", "build_estimator": "meta_train.build", "build_parallelism": "meta_train.build",
    "build_meta_optimizer": "meta_train.build", "Run": "meta_train.build",
    "initialize_distributed": "meta_train.launch", "apply_cpu_loop_unrolling": "meta_train.launch",
    "apply_host_devices": "meta_train.launch",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED_NAMES:
        warnings.warn(f"meta_train.config.{name} moved to {_MOVED_NAMES[name]}.{name}; the old path goes in the next "
                      "release", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED_NAMES[name]), name)
    raise AttributeError(f"module 'meta_train.config' has no attribute {name!r}")
