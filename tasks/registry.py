"""The registry of task families by name: `register`, `get`, `registered_names`, `accepts_argument`.

A name maps to a TaskFamily subclass or to a factory function returning a TaskFamily (such as a
function that calls `tasks.from_flax`); `get` checks keyword arguments against either's signature.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, List, Tuple, TypeVar, Union

from tasks.base import TaskError, TaskFamily

FamilyBuilder = Union[type, Callable[..., TaskFamily]]
Builder = TypeVar("Builder", bound=FamilyBuilder)

_FAMILIES: Dict[str, FamilyBuilder] = {}


def _is_family_class(builder: Any) -> bool:
    return isinstance(builder, type) and issubclass(builder, TaskFamily)


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator that registers a TaskFamily subclass (naming it, if unnamed) or a factory function under `name`."""

    def decorate(builder: Builder) -> Builder:
        if not _is_family_class(builder) and (isinstance(builder, type) or not callable(builder)):
            raise TaskError(
                f"tasks.register({name!r}) expects a TaskFamily subclass or a function returning one, got {builder!r}"
            )
        existing = _FAMILIES.get(name)
        if existing is not None and _qualified_name(existing) != _qualified_name(builder):
            raise TaskError(f"task family name {name!r} is already registered to {_qualified_name(existing)}")
        _FAMILIES[name] = builder
        if _is_family_class(builder) and "name" not in vars(builder):
            builder.name = name
        return builder

    return decorate


def registered_names() -> Tuple[str, ...]:
    """Returns the names of all registered task families, sorted."""
    return tuple(sorted(_FAMILIES))


def get(name: str, **kwargs: Any) -> TaskFamily:
    """Builds the registered family `name` from keyword arguments; TaskError on unknown names/arguments."""
    builder = _family_builder(name)
    signature_parameters = _constructor_parameters(builder)
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
    family = builder(**kwargs)
    if not isinstance(family, TaskFamily):
        raise TaskError(f"task family {name!r}: its factory {_qualified_name(builder)} returned "
                        f"{type(family).__name__}, not a TaskFamily")
    return family


def _family_builder(name: str) -> FamilyBuilder:
    if name not in _FAMILIES:
        raise TaskError(f"unknown task family {name!r}; registered: {', '.join(registered_names())}")
    return _FAMILIES[name]


def _constructor_parameters(builder: FamilyBuilder) -> List[inspect.Parameter]:
    if _is_family_class(builder):
        return list(inspect.signature(builder.__init__).parameters.values())[1:]
    return list(inspect.signature(builder).parameters.values())


def _qualified_name(builder: FamilyBuilder) -> str:
    return f"{getattr(builder, '__module__', '?')}.{getattr(builder, '__qualname__', type(builder).__qualname__)}"


def accepts_argument(name: str, argument: str) -> bool:
    """Returns whether the registered family `name` takes a constructor argument `argument` (False if unknown)."""
    builder = _FAMILIES.get(name)
    if builder is None:
        return False
    return any(p.name == argument or p.kind is p.VAR_KEYWORD for p in _constructor_parameters(builder))
