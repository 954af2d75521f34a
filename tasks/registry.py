"""The registry of task families by name: `register`, `get`, `registered_names`, `accepts_argument`."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Tuple, Type, TypeVar

from tasks.base import TaskError, TaskFamily

FamilyClass = TypeVar("FamilyClass", bound=Type[TaskFamily])

_FAMILIES: Dict[str, Type[TaskFamily]] = {}


def register(name: str) -> Callable[[FamilyClass], FamilyClass]:
    """Class decorator that registers a TaskFamily subclass under `name` for `tasks.get` (and names it, if unnamed)."""

    def decorate(cls: FamilyClass) -> FamilyClass:
        if not (isinstance(cls, type) and issubclass(cls, TaskFamily)):
            raise TaskError(f"tasks.register({name!r}) expects a TaskFamily subclass, got {cls!r}")
        existing = _FAMILIES.get(name)
        if existing is not None and _qualified_name(existing) != _qualified_name(cls):
            raise TaskError(f"task family name {name!r} is already registered to {_qualified_name(existing)}")
        _FAMILIES[name] = cls
        if "name" not in vars(cls):
            cls.name = name
        return cls

    return decorate


def registered_names() -> Tuple[str, ...]:
    """Returns the names of all registered task families, sorted."""
    return tuple(sorted(_FAMILIES))


def get(name: str, **kwargs: Any) -> TaskFamily:
    """Builds the registered family `name` from keyword arguments; TaskError on unknown names/arguments."""
    cls = _family_class(name)
    signature_parameters = _constructor_parameters(cls)
    parameters = [p for p in signature_parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_any_keyword = any(p.kind is p.VAR_KEYWORD for p in signature_parameters)
    valid = [p.name for p in parameters]
    unknown = [] if takes_any_keyword else sorted(set(kwargs) - set(valid))
    if unknown:
        raise TaskError(
            f"task family {name!r} has no argument(s) {', '.join(unknown)}; valid: {', '.join(valid) or 'none'}"
        )
    missing = [p.name for p in parameters if p.default is p.empty and p.name not in kwargs]
    if missing:
        raise TaskError(f"task family {name!r} needs argument(s) {', '.join(missing)}; valid: {', '.join(valid)}")
    return cls(**kwargs)


def _family_class(name: str) -> Type[TaskFamily]:
    if name not in _FAMILIES:
        raise TaskError(f"unknown task family {name!r}; registered: {', '.join(registered_names())}")
    return _FAMILIES[name]


def _constructor_parameters(cls: type) -> List[inspect.Parameter]:
    return list(inspect.signature(cls.__init__).parameters.values())[1:]


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def accepts_argument(name: str, argument: str) -> bool:
    """Returns whether the registered family `name` takes a constructor argument `argument` (False if unknown)."""
    cls = _FAMILIES.get(name)
    if cls is None:
        return False
    return any(p.name == argument or p.kind is p.VAR_KEYWORD for p in _constructor_parameters(cls))
