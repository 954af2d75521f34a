"""Building a run from its config: the task family, learned optimizer, estimator, horizon, meta-optimizer and
trainer a config describes, each named part taken from its registry.

Families come from `tasks`' registry, optimizers from `lopt`'s, and estimators, horizons and
meta-learning-rate schedules from `meta_train.registry`; every part's settings sit in the
`kwargs` group beside its name and are checked by the part's own constructor, whose error is
reported as one line naming the config group.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import ml_collections
import optax

import lopt
import tasks
from meta_train import meta_lr_schedules  # noqa: F401 - registers the schedules
from meta_train import registry
from meta_train.config import (
    ConfigError, load_config, parse_overrides, parse_phases, regularizer_settings, reparameterize_choices, validate,
)
from meta_train.estimator import Estimator
from meta_train.horizons import Horizon
from meta_train.parallel import TaskParallelism
from meta_train.regularizer import MetaRegularizer
from meta_train.trainer import Trainer

# The built-in estimators register themselves when their modules load.
from meta_train import (  # noqa: F401,E402
    evosax_adapter, full_horizon_es, pes, policy_gradient, truncated_backprop, truncated_es)


def config_kwargs(group: Any) -> Dict[str, Any]:
    """Returns a `kwargs` config group as constructor arguments (lists become tuples)."""
    items = group.to_dict() if isinstance(group, ml_collections.ConfigDict) else dict(group)
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in items.items()}


def build_task_family(name: str, kwargs: Mapping[str, Any], *, data_dir: str = "", reparameterize: Any = None,
                      where: str = "config.task") -> tasks.TaskFamily:
    """Returns the registered family `name` built with `kwargs`; the one way meta-training and evaluation build one.

    `data_dir` (else $LOPT_DATA_DIR) is passed on to families that take one; `reparameterize` is a
    `reparameterize` config group (levels, ranges) that wraps the family in `tasks.reparameterize`.
    Errors are one-line ConfigErrors that start with `where`.
    """
    kwargs = config_kwargs(kwargs)
    data_dir = data_dir or os.environ.get("LOPT_DATA_DIR", "")
    if data_dir and "data_dir" not in kwargs and tasks.accepts_argument(name, "data_dir"):
        kwargs["data_dir"] = data_dir
    choices = None if reparameterize is None else reparameterize_choices(reparameterize, f"{where}.reparameterize")
    try:
        family = tasks.get(name, **kwargs)
    except tasks.TaskError as err:
        raise ConfigError(f"{where}: {err}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: cannot build {name!r}: {err}") from None
    return family if choices is None else tasks.reparameterize(family, *choices)


def mixture_entries(config: ml_collections.ConfigDict) -> Sequence[Tuple[str, ml_collections.ConfigDict]]:
    """Returns (name, entry) for each `config.task.mixture` entry, or [(family name, config.task)] without one;
    each entry holds `family`, optionally `kwargs` and `reparameterize`."""
    if not len(config.task.mixture):
        return [(config.task.family, config.task)]
    entries = []
    for entry_name, entry in config.task.mixture.items():
        unknown = sorted(set(entry.keys()) - {"family", "kwargs", "reparameterize"}) \
            if isinstance(entry, ml_collections.ConfigDict) else []
        if not isinstance(entry, ml_collections.ConfigDict) or "family" not in entry or unknown:
            raise ConfigError(f"config.task.mixture.{entry_name} must hold 'family' and optionally 'kwargs', "
                              "'reparameterize'" + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
        entries.append((entry_name, entry))
    return entries


def build_family(config: ml_collections.ConfigDict) -> Any:
    """Returns the task family named in `config.task`, or the list of families of `config.task.mixture`.

    A mixture maps entry names to `{"family": NAME, "kwargs": {...}}`; each family gets its own
    batch of tasks. `config.task.reparameterize` (levels, ranges; empty levels = off) wraps the
    family, or each mixture entry that sets no `reparameterize` of its own.
    """
    families = []
    for entry_name, entry in mixture_entries(config):
        where = f"config.task.mixture.{entry_name}" if len(config.task.mixture) else "config.task"
        families.append(build_task_family(
            entry.family, entry.get("kwargs", ml_collections.ConfigDict()), data_dir=config.data_dir,
            reparameterize=entry.get("reparameterize", config.task.reparameterize), where=where))
    return families if len(config.task.mixture) else families[0]


def build_optimizer(config: ml_collections.ConfigDict) -> lopt.LearnedOptimizer:
    """Returns the learned optimizer named in `config.optimizer`."""
    try:
        return lopt.get(config.optimizer.name, **config_kwargs(config.optimizer.kwargs))
    except (lopt.LearnedOptimizerError, TypeError, ValueError) as err:
        raise ConfigError(f"config.optimizer: {err}") from None


def _build_named(table: registry.Registry, group: ml_collections.ConfigDict, where: str, **common: Any) -> Any:
    try:
        return table.build(group.name, **common, **config_kwargs(group.kwargs))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def build_horizon(config: ml_collections.ConfigDict) -> Horizon:
    """Returns the inner-run length schedule `config.meta_train.horizon` names."""
    return _build_named(registry.HORIZONS, config.meta_train.horizon, "config.meta_train.horizon")


def build_estimator(config: ml_collections.ConfigDict) -> Estimator:
    """Returns the meta-gradient estimator `config.meta_train.estimator` names, over `meta_train.num_tasks` tasks."""
    mt = config.meta_train
    return _build_named(registry.ESTIMATORS, mt.estimator, "config.meta_train.estimator",
                        num_tasks=int(mt.num_tasks), task_map=mt.task_map)


def build_parallelism(config: ml_collections.ConfigDict) -> TaskParallelism:
    """Returns how the task axis is spread over devices (`meta_train.parallel`, `meta_train.num_devices`)."""
    mt = config.meta_train
    try:
        parallelism = TaskParallelism(mt.parallel, mt.num_devices or None)
        parallelism.check_num_tasks(mt.num_tasks)
    except ValueError as err:
        raise ConfigError(f"config.meta_train: {err}") from None
    return parallelism


def build_meta_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Returns Adam with global-norm gradient clipping, its rate `meta_learning_rate` under the schedule
    `meta_train.meta_lr_schedule` names."""
    mt = config.meta_train
    rate = _build_named(registry.META_LR_SCHEDULES, mt.meta_lr_schedule, "config.meta_train.meta_lr_schedule",
                        learning_rate=float(mt.meta_learning_rate))
    return optax.chain(optax.clip_by_global_norm(mt.grad_clip), optax.adam(rate))


def build_regularizer(config: ml_collections.ConfigDict, optimizer: lopt.LearnedOptimizer) -> MetaRegularizer:
    """Returns the meta-regulariser `config.meta_train.regularizer` describes, checked against `optimizer`."""
    regularizer = regularizer_settings(config)
    try:
        regularizer.check_optimizer(optimizer)
    except ValueError as err:
        raise ConfigError(f"config.meta_train.regularizer.smoothness_weight: {err}") from None
    return regularizer


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
    estimator, horizon = build_estimator(config), build_horizon(config)
    regularizer = build_regularizer(config, optimizer)
    try:
        trainer = Trainer(
            family,
            optimizer,
            estimator=estimator,
            horizon=horizon,
            meta_optimizer=build_meta_optimizer(config),
            meta_loss=config.meta_train.meta_loss,
            max_meta_loss=config.meta_train.max_meta_loss,
            parallelism=build_parallelism(config),
            accumulate=config.meta_train.accumulate,
            family_labels=[name for name, _ in mixture_entries(config)] if len(config.task.mixture) else None,
            regularizer=regularizer,
        )
    except ValueError as err:
        raise ConfigError(f"config.meta_train: {err}") from None
    for name, _ in parse_phases(config.meta_train.phases, config.meta_train.num_steps):
        try:
            optimizer.trainable_mask(optimizer.init(jax.random.key(0)), name)
        except (lopt.LearnedOptimizerError, ValueError) as err:
            raise ConfigError(f"config.meta_train.phases: {err}") from None
    return Run(family, optimizer, trainer)


def build_from_file(path: str, overrides: Optional[Sequence[str]] = None) -> Run:
    """Returns the run the config file at `path` describes, with `--config.key=value` overrides applied."""
    return build(parse_overrides(load_config(path), overrides or ()))
