"""Config files for meta-training runs: loading, command-line overrides, validation, and building the run.

A config file is a Python file defining `get_config() -> ml_collections.ConfigDict`.
Overrides look like `--config.meta_train.num_tasks=16`; an unknown key or a value of the
wrong type is a one-line ConfigError, raised before anything is compiled.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import os
import warnings
from pathlib import Path
from typing import Any, List, NamedTuple, Sequence, Tuple

import jax
import ml_collections
import optax

import lopt
import tasks
from meta_train.estimator import Estimator
from meta_train.horizons import ConstantHorizon, Horizon, LogUniformHorizon
from meta_train.parallel import (
    TaskParallelism, force_host_devices, host_device_count, set_cpu_loop_unrolling, with_loop_unrolling,
)
from meta_train.evosax_adapter import STRATEGIES as EVOSAX_STRATEGIES
from meta_train.evosax_adapter import EvosaxEstimator
from meta_train.full_horizon_es import FullHorizonES
from meta_train.pes import PES
from meta_train.truncated_backprop import TruncatedBackprop
from meta_train.truncated_es import TruncatedES
from meta_train.trainer import Trainer
from tasks.reparameterize import RANGES as REPARAMETERIZE_RANGES
from tasks.reparameterize import check_choices as check_reparameterize_choices

ESTIMATORS = ("pes", "truncated_es", "full_horizon_es", "tbptt", "evosax")
HORIZON_KINDS = ("constant", "log_uniform")
TASK_MAPS = ("vmap", "map")
PARALLEL_MODES = ("none", "shard_map", "pmap")


class ConfigError(ValueError):
    """A config file or override is unreadable, names an unknown key, or holds an invalid value."""


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
    config.optimizer = ml_collections.ConfigDict({"name": "mlp", "kwargs": ml_collections.ConfigDict()})
    config.meta_train = ml_collections.ConfigDict(
        {
            "estimator": "pes",
            "num_tasks": 8,
            "trunc_length": 20,
            "std": 0.01,
            "horizon": "constant",
            "horizon_length": 200,
            "horizon_min": 100,
            "horizon_max": 1000,
            "meta_loss": "train",
            "max_meta_loss": 10.0,
            "meta_learning_rate": 1e-3,
            "meta_lr_decay_steps": 0,
            "meta_lr_final_fraction": 0.1,
            "grad_clip": 1.0,
            "num_steps": 1000,
            "task_map": "vmap",
            "phases": (),
            "parallel": "none",
            "num_devices": 0,
            "host_devices": 0,
            "accumulate": 1,
            "loss_type": "mean",
            "evosax_strategy": "PersistentES",
        }
    )
    config.distributed = ml_collections.ConfigDict(
        {"enabled": False, "coordinator_address": "", "num_processes": 0, "process_id": -1}
    )
    config.checkpoint = ml_collections.ConfigDict({"every": 100, "keep": 3})
    config.log_every = 10
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
    config.meta_train.horizon_length = 100
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
    config.meta_train.horizon_length = 200
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
        raise ConfigError(f"config file {path} failed to load: {type(err).__name__}: {err}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() in {path} must return an ml_collections.ConfigDict")
    return config


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
    node = config
    for depth, part in enumerate(parts):
        known = list(node.keys())
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
        raise ConfigError(f"--config.{dotted} is a group; set one of its keys: {', '.join(sorted(current.keys()))}")
    with node.unlocked():
        node[leaf] = _coerce(_parse_value(text), current, dotted)


def parse_overrides(config: ml_collections.ConfigDict, args: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies `--config.key=value` (or `--config.key value`) arguments to `config` and returns it."""
    args = list(args)
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
        apply_override(config, dotted, text)
        i += 1
    return config


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_known_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str) -> None:
    for key in config.keys():
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
    _require(mt.estimator in ESTIMATORS, f"meta_train.estimator must be one of {ESTIMATORS}, got {mt.estimator!r}")
    _require(mt.horizon in HORIZON_KINDS, f"meta_train.horizon must be one of {HORIZON_KINDS}, got {mt.horizon!r}")
    _require(mt.parallel in PARALLEL_MODES, f"meta_train.parallel must be one of {PARALLEL_MODES}, got {mt.parallel!r}")
    _require(mt.num_devices >= 0, f"meta_train.num_devices must be >= 0 (0 = all visible), got {mt.num_devices}")
    _require(mt.host_devices >= -1,
             f"meta_train.host_devices must be -1 (one per core), 0 (leave as is) or a count, got {mt.host_devices}")
    _require(mt.host_devices == 0 or mt.parallel != "none",
             f"meta_train.host_devices={mt.host_devices} splits the CPU into devices for meta_train.parallel="
             "'shard_map' (or 'pmap'); set it, or host_devices=0")
    _require(mt.task_map in TASK_MAPS, f"meta_train.task_map must be one of {TASK_MAPS}, got {mt.task_map!r}")
    _require(mt.meta_loss in ("train", "valid"), f"meta_train.meta_loss must be 'train' or 'valid', got {mt.meta_loss!r}")
    for key in ("num_tasks", "trunc_length", "num_steps"):
        _require(int(mt[key]) >= 1, f"meta_train.{key} must be >= 1, got {mt[key]}")
    for key in ("std", "meta_learning_rate", "grad_clip", "max_meta_loss"):
        _require(float(mt[key]) > 0 and math.isfinite(float(mt[key])), f"meta_train.{key} must be positive, got {mt[key]}")
    _require(mt.accumulate >= 1, f"meta_train.accumulate must be >= 1, got {mt.accumulate}")
    _require(int(mt.meta_lr_decay_steps) >= 0,
             f"meta_train.meta_lr_decay_steps must be >= 0 (0: constant rate), got {mt.meta_lr_decay_steps}")
    _require(0.0 < float(mt.meta_lr_final_fraction) <= 1.0,
             f"meta_train.meta_lr_final_fraction must lie in (0, 1], got {mt.meta_lr_final_fraction}")
    if mt.estimator == "full_horizon_es":
        _require(mt.horizon == "constant", "meta_train.estimator='full_horizon_es' needs meta_train.horizon='constant'")
        _require(mt.loss_type in ("mean", "last"), f"meta_train.loss_type must be 'mean' or 'last', got {mt.loss_type!r}")
    if mt.estimator == "evosax":
        _require(mt.evosax_strategy in EVOSAX_STRATEGIES,
                 f"meta_train.evosax_strategy must be one of {tuple(EVOSAX_STRATEGIES)}, got {mt.evosax_strategy!r}")
    minimum = mt.horizon_length if mt.horizon == "constant" else mt.horizon_min
    _require(
        mt.estimator == "full_horizon_es" or minimum >= mt.trunc_length,
        f"the shortest inner run ({minimum} steps) must be >= meta_train.trunc_length ({mt.trunc_length})",
    )
    if mt.horizon == "log_uniform":
        _require(mt.horizon_min <= mt.horizon_max, f"meta_train.horizon_min ({mt.horizon_min}) > horizon_max ({mt.horizon_max})")
    parse_phases(mt.phases, mt.num_steps)
    _require(config.checkpoint.every >= 1 and config.checkpoint.keep >= 1, "checkpoint.every and checkpoint.keep must be >= 1")
    _require(config.log_every >= 1, f"log_every must be >= 1, got {config.log_every}")
    if config.eval.enabled:
        _require(config.eval.num_tasks >= 1 and config.eval.num_steps >= 1, "eval.num_tasks and eval.num_steps must be >= 1")
        _require(len(config.eval.learning_rates) >= 1, "eval.learning_rates must list at least one learning rate")
        _require(all(lr > 0 for lr in config.eval.learning_rates), "eval.learning_rates must be positive")


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


def _kwargs(group: ml_collections.ConfigDict) -> dict:
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in group.to_dict().items()}


def build_family(config: ml_collections.ConfigDict) -> Any:
    """Returns the task family named in `config.task`, or the list of families of `config.task.mixture`.

    `config.data_dir` is passed on to families that take a `data_dir`. A mixture maps entry
    names to `{"family": NAME, "kwargs": {...}}`; each family gets its own batch of tasks.
    `config.task.reparameterize` (levels, ranges; empty levels = off) wraps the family, or each
    mixture entry that sets no `reparameterize` of its own, in `tasks.reparameterize`.
    """
    if len(config.task.mixture):
        families = []
        for entry_name, entry in config.task.mixture.items():
            unknown = sorted(set(entry.keys()) - {"family", "kwargs", "reparameterize"})
            _require(isinstance(entry, ml_collections.ConfigDict) and "family" in entry and not unknown,
                     f"config.task.mixture.{entry_name} must hold 'family' and optionally 'kwargs', 'reparameterize'"
                     + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
            families.append(_one_family(config, entry.family, entry.get("kwargs", ml_collections.ConfigDict()),
                                        f"config.task.mixture.{entry_name}",
                                        entry.get("reparameterize", config.task.reparameterize)))
        return families
    return _one_family(config, config.task.family, config.task.kwargs, "config.task", config.task.reparameterize)


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


def _one_family(config: ml_collections.ConfigDict, name: str, kwargs_group: Any, where: str,
                reparameterize_group: Any) -> tasks.TaskFamily:
    kwargs = _kwargs(kwargs_group) if isinstance(kwargs_group, ml_collections.ConfigDict) else dict(kwargs_group)
    data_dir = config.data_dir or os.environ.get("LOPT_DATA_DIR", "")
    if data_dir and "data_dir" not in kwargs and tasks.accepts_argument(name, "data_dir"):
        kwargs["data_dir"] = data_dir
    choices = reparameterize_choices(reparameterize_group, f"{where}.reparameterize")
    try:
        family = tasks.get(name, **kwargs)
    except tasks.TaskError as err:
        raise ConfigError(f"{where}: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: cannot build {name!r}: {err}") from None
    return family if choices is None else tasks.reparameterize(family, *choices)


def build_optimizer(config: ml_collections.ConfigDict) -> lopt.LearnedOptimizer:
    """Returns the learned optimizer named in `config.optimizer`."""
    try:
        return lopt.get(config.optimizer.name, **_kwargs(config.optimizer.kwargs))
    except (lopt.LearnedOptimizerError, TypeError, ValueError) as err:
        raise ConfigError(f"config.optimizer: {err}") from None


def build_horizon(config: ml_collections.ConfigDict) -> Horizon:
    """Returns the inner-run length schedule of `config.meta_train`."""
    mt = config.meta_train
    if mt.horizon == "constant":
        return ConstantHorizon(mt.horizon_length)
    return LogUniformHorizon(mt.horizon_min, mt.horizon_max)


def build_estimator(config: ml_collections.ConfigDict) -> Estimator:
    """Returns the meta-gradient estimator of `config.meta_train`."""
    mt = config.meta_train
    common = {"num_tasks": mt.num_tasks, "task_map": mt.task_map}
    try:
        if mt.estimator == "pes":
            return PES(trunc_length=mt.trunc_length, std=mt.std, **common)
        if mt.estimator == "truncated_es":
            return TruncatedES(trunc_length=mt.trunc_length, std=mt.std, **common)
        if mt.estimator == "tbptt":
            return TruncatedBackprop(trunc_length=mt.trunc_length, **common)
        if mt.estimator == "full_horizon_es":
            return FullHorizonES(horizon_length=mt.horizon_length, std=mt.std, loss_type=mt.loss_type, **common)
        return EvosaxEstimator(mt.evosax_strategy, trunc_length=mt.trunc_length, std=mt.std, **common)
    except ValueError as err:
        raise ConfigError(f"config.meta_train: {err}") from None


def build_parallelism(config: ml_collections.ConfigDict) -> TaskParallelism:
    """Returns how the task axis is spread over devices (`meta_train.parallel`, `meta_train.num_devices`)."""
    mt = config.meta_train
    try:
        parallelism = TaskParallelism(mt.parallel, mt.num_devices or None)
        parallelism.check_num_tasks(mt.num_tasks)
    except ValueError as err:
        raise ConfigError(f"config.meta_train: {err}") from None
    return parallelism


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Joins JAX's multi-process runtime when `distributed.enabled`; unset fields come from the environment.

    Must run before anything touches a device.
    """
    settings = config.distributed
    if not settings.enabled:
        return
    kwargs = {}
    if settings.coordinator_address:
        kwargs["coordinator_address"] = settings.coordinator_address
    if settings.num_processes > 0:
        kwargs["num_processes"] = settings.num_processes
    if settings.process_id >= 0:
        kwargs["process_id"] = settings.process_id
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"config.distributed: could not join the multi-process runtime: {err}") from None


def apply_cpu_loop_unrolling(config: ml_collections.ConfigDict) -> bool:
    """Sets XLA:CPU's loop unrolling for this process from `config.xla_cpu_loop_unrolling` (see
    parallel.set_cpu_loop_unrolling); returns whether the setting is in effect.

    Must run before anything touches a device; in a process whose backend has already started
    (a notebook, a test) a change cannot take effect and a warning says so.
    """
    enabled = bool(config.xla_cpu_loop_unrolling)
    if set_cpu_loop_unrolling(enabled):
        return True
    warnings.warn(
        f"xla_cpu_loop_unrolling={enabled} has no effect: JAX's backend already started in this process; "
        f"set XLA_FLAGS={with_loop_unrolling(os.environ.get('XLA_FLAGS', ''), enabled)!r} before starting it",
        stacklevel=2,
    )
    return False


def apply_host_devices(config: ml_collections.ConfigDict) -> int:
    """Splits the CPU into `meta_train.host_devices` XLA devices (see parallel.force_host_devices); returns the
    device count JAX then has.

    Must run before anything touches a device. With -1 (one per core) in a process whose backend
    has already started, the devices it has are kept; an explicit count that can no longer be
    set is a ConfigError.
    """
    mt = config.meta_train
    if mt.host_devices == 0:
        return jax.device_count()
    count = host_device_count(int(mt.host_devices), int(mt.num_tasks))
    try:
        force_host_devices(count)
    except RuntimeError as err:
        if mt.host_devices != -1:
            raise ConfigError(f"meta_train.host_devices={mt.host_devices}: {err}") from None
    return jax.device_count()


def build_meta_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Returns Adam with global-norm gradient clipping; its rate is constant, or cosine-decays over
    `meta_lr_decay_steps` meta-steps to `meta_lr_final_fraction` of `meta_learning_rate` and stays there."""
    mt = config.meta_train
    rate = float(mt.meta_learning_rate)
    if int(mt.meta_lr_decay_steps) > 0:
        rate = optax.cosine_decay_schedule(rate, int(mt.meta_lr_decay_steps), float(mt.meta_lr_final_fraction))
    return optax.chain(optax.clip_by_global_norm(mt.grad_clip), optax.adam(rate))


class Run(NamedTuple):
    """The objects a config describes."""

    family: tasks.TaskFamily
    learned_optimizer: lopt.LearnedOptimizer
    trainer: Trainer


def build(config: ml_collections.ConfigDict) -> Run:
    """Validates `config` and returns the family, learned optimizer and trainer it describes."""
    validate(config)
    family = build_family(config)
    optimizer = build_optimizer(config)
    trainer = Trainer(
        family,
        optimizer,
        estimator=build_estimator(config),
        horizon=build_horizon(config),
        meta_optimizer=build_meta_optimizer(config),
        meta_loss=config.meta_train.meta_loss,
        max_meta_loss=config.meta_train.max_meta_loss,
        parallelism=build_parallelism(config),
        accumulate=config.meta_train.accumulate,
    )
    for name, _ in parse_phases(config.meta_train.phases, config.meta_train.num_steps):
        try:
            optimizer.trainable_mask(optimizer.init(jax.random.key(0)), name)
        except (lopt.LearnedOptimizerError, ValueError) as err:
            raise ConfigError(f"config.meta_train.phases: {err}") from None
    return Run(family, optimizer, trainer)
