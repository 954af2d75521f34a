"""Registries of the named parts a config selects: meta-gradient estimators, horizons and meta-learning-rate
schedules (task families and learned optimizers have theirs in `tasks` and `lopt`).

A researcher's own estimator becomes selectable from a config file with one decorator:

    @meta_train.register_estimator("my_es")
    class MyES(meta_train.Estimator):
        def __init__(self, num_tasks: int = 8, task_map: str = "vmap", trunc_length: int = 20, sigma: float = 0.1):
            ...

and `config.meta_train.estimator = {"name": "my_es", "kwargs": {"sigma": 0.05}}`. Every estimator is
built with the trainer-level `num_tasks` and `task_map` plus its `kwargs`.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, List, TypeVar

Factory = TypeVar("Factory", bound=Callable[..., Any])


class RegistryError(ValueError):
    """A registry was asked for an unknown name, or a registered part for an argument it does not take."""


class Registry:
    """Names to constructors (classes or functions) of one kind of part."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Factory], Factory]:
        """Returns a decorator that makes a class or function available under `name`."""

        def decorator(factory: Factory) -> Factory:
            if not callable(factory):
                raise TypeError(f"@register({name!r}) expects a class or function, got {factory!r}")
            previous = self._entries.get(name)
            reloaded = previous is not None and (getattr(previous, "__module__", None), previous.__qualname__) == (
                getattr(factory, "__module__", None), factory.__qualname__)
            if previous is not None and previous is not factory and not reloaded:
                raise RegistryError(f"a {self.kind} named {name!r} is already registered ({previous.__qualname__})")
            self._entries[name] = factory
            return factory

        return decorator

    def names(self) -> List[str]:
        """Returns the registered names, sorted."""
        return sorted(self._entries)

    def get(self, name: str) -> Callable[..., Any]:
        """Returns the constructor registered as `name`; an unknown name is a RegistryError naming the choices."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RegistryError(f"unknown {self.kind} {name!r}{hint} (registered: {', '.join(self.names())})")
        return self._entries[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        """Returns `get(name)(**kwargs)`, first checking that it takes every argument given."""
        factory = self.get(name)
        parameters = inspect.signature(factory).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            unknown = sorted(set(kwargs) - set(parameters))
            if unknown:
                valid = [p for p in parameters if p != "self"]
                raise RegistryError(f"{self.kind} {name!r} takes no argument(s) {', '.join(unknown)}; "
                                    f"it takes: {', '.join(valid) or '(none)'}")
        missing = [p.name for p in parameters.values() if p.name != "self" and p.name not in kwargs
                   and p.default is inspect.Parameter.empty
                   and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        if missing:
            raise RegistryError(f"{self.kind} {name!r} needs argument(s) {', '.join(missing)} in its kwargs")
        return factory(**kwargs)


ESTIMATORS = Registry("estimator")
HORIZONS = Registry("horizon")
META_LR_SCHEDULES = Registry("meta-learning-rate schedule")


def register_estimator(name: str) -> Callable[[Factory], Factory]:
    """Class decorator: makes an Estimator selectable as `config.meta_train.estimator.name = name`."""
    return ESTIMATORS.register(name)


def register_horizon(name: str) -> Callable[[Factory], Factory]:
    """Class decorator: makes a Horizon selectable as `config.meta_train.horizon.name = name`."""
    return HORIZONS.register(name)


def register_meta_lr_schedule(name: str) -> Callable[[Factory], Factory]:
    """Decorator for a function (learning_rate, **kwargs) -> optax schedule or float, selectable as
    `config.meta_train.meta_lr_schedule.name = name`."""
    return META_LR_SCHEDULES.register(name)
