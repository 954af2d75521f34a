"""The learned-optimizer contract and the registry that maps names to optimizer classes."""

from __future__ import annotations

import dataclasses
import functools
import typing
import warnings
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple, Type, Union

import jax
import numpy as np
import optax

from lopt.export_format import LEGACY_OPTIMIZER_NAMES

MetaParams = Any
Array = jax.Array
NumSteps = Optional[Union[int, Array]]


class LearnedOptimizer:
    """A parametric optimizer: meta-parameters in, a plain optax transformation out.

    Every concrete subclass is declared as a frozen, keyword-only dataclass,
    `@dataclasses.dataclass(frozen=True, kw_only=True)`, whose fields are its constructor
    arguments: hyperparameters fixed for the optimizer's life, never meta-parameters (those are
    passed to `transformation`). The fields are the optimizer's `config`, which the export format
    stores so the optimizer can be rebuilt with `lopt.get(name, **config)`; equal configs make
    equal, equally hashed optimizers, so an optimizer can be a static argument of `jax.jit`.

    `LearnedOptimizer.__post_init__` converts each field to its declared type (`float`, `int`,
    `bool`, `str`, or a tuple of those), so configs read back from JSON (lists, ints for floats)
    rebuild equal optimizers. A subclass validating its fields in its own `__post_init__` calls
    `super().__post_init__()` first.

    Subclasses implement `init` and `transformation`.
    """

    name: ClassVar[str] = "learned_optimizer"

    def __post_init__(self) -> None:
        """Converts every field to its declared type (see the class docstring)."""
        for field_name, convert in _field_converters(type(self)).items():
            object.__setattr__(self, field_name, convert(getattr(self, field_name), field_name))

    @property
    def config(self) -> Dict[str, Any]:
        """The constructor arguments (the dataclass fields) this optimizer was built with."""
        if not dataclasses.is_dataclass(self):
            raise LearnedOptimizerError(
                f"{type(self).__name__} declares no fields: make it a "
                "@dataclasses.dataclass(frozen=True, kw_only=True) whose fields are its constructor arguments")
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.init}

    def init(self, key: Array) -> MetaParams:
        """Returns initial meta-parameters: a pytree (nested dicts) of float32 arrays."""
        raise NotImplementedError

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax transformation defined by `meta_params`.

        `meta_params` may be a tracer (under jit, vmap, or an ES perturbation). `num_steps` is
        the length of the inner run when known (an int or a scalar array); optimizers that
        use a training fraction need it.
        """
        if type(self).optimizer is not LearnedOptimizer.optimizer:
            warnings.warn(f"{type(self).__name__} implements optimizer(meta_params, ...); rename it to "
                          "transformation(meta_params, ...)", DeprecationWarning, stacklevel=2)
            return self.optimizer(meta_params, num_steps=num_steps)
        raise NotImplementedError

    def optimizer(self, meta_params: MetaParams, *, num_steps: NumSteps = None,
                  **kwargs: Any) -> optax.GradientTransformationExtraArgs:
        """Deprecated name of `transformation`."""
        warnings.warn("LearnedOptimizer.optimizer(meta_params, ...) is deprecated; call "
                      "transformation(meta_params, ...)", DeprecationWarning, stacklevel=2)
        return self.transformation(meta_params, num_steps=num_steps, **kwargs)

    def update_feature_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Returns the per-sample shape of each feature array `update_from_features` reads, one per network of
        the update rule (optional: optimizers that expose their rule this way override both methods)."""
        raise LearnedOptimizerError(
            f"optimizer {self.name!r} does not expose its update as a function of its input features "
            "(update_feature_shapes / update_from_features), which the smoothness regulariser needs")

    def update_from_features(self, meta_params: MetaParams, features: Dict[str, Array]) -> Dict[str, Array]:
        """Returns the update rule's steps, in units of the optimizer's fixed step scale, for `features[name]` of
        shape `[n, *update_feature_shapes()[name]]`: one output per parameter the features describe, shaped
        `[n, ...]` (optional; see `update_feature_shapes`)."""
        del meta_params, features
        self.update_feature_shapes()
        raise NotImplementedError

    def trainable_mask(self, meta_params: MetaParams, phase: str = "all") -> Any:
        """Returns a pytree of bools shaped like `meta_params`: which meta-params a meta-training phase changes.

        Every optimizer has the phase "all"; optimizers trained in stages (e.g. Celo) add their own.
        """
        if phase != "all":
            raise LearnedOptimizerError(f"optimizer {self.name!r} has no meta-training phase {phase!r}; it has: all")
        return jax.tree.map(lambda _: True, meta_params)


class LearnedOptimizerError(ValueError):
    """A learned optimizer was asked for by an unknown name or with invalid arguments."""


def _convert_bool(value: Any, field_name: str) -> bool:
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1)):
        return bool(value)
    raise LearnedOptimizerError(f"{field_name} must be True or False, got {value!r}")


def _convert_str(value: Any, field_name: str) -> str:
    if isinstance(value, str):
        return str(value)
    raise LearnedOptimizerError(f"{field_name} must be a string, got {value!r}")


def _scalar_converter(kind: Any) -> Optional[Callable[[Any, str], Any]]:
    if kind is bool:
        return _convert_bool
    if kind is str:
        return _convert_str
    if kind in (int, float):
        return lambda value, field_name: kind(value)
    return None


def _converter(declared: Any) -> Optional[Callable[[Any, str], Any]]:
    """Returns the function converting a field value to the `declared` type, or None to keep values as given."""
    if typing.get_origin(declared) is not tuple:
        return _scalar_converter(declared)
    element_types = typing.get_args(declared)
    if len(element_types) == 2 and element_types[1] is Ellipsis:
        convert = _scalar_converter(element_types[0]) or (lambda value, field_name: value)
        return lambda values, field_name: tuple(convert(v, field_name) for v in values)
    converts = [_scalar_converter(t) or (lambda value, field_name: value) for t in element_types]

    def convert_fixed(values: Any, field_name: str) -> Tuple[Any, ...]:
        values = tuple(values)
        if len(values) != len(converts):
            raise LearnedOptimizerError(f"{field_name} must have {len(converts)} entries, got {values!r}")
        return tuple(convert(v, field_name) for convert, v in zip(converts, values))

    return convert_fixed


@functools.lru_cache(maxsize=None)
def _field_converters(cls: type) -> Dict[str, Callable[[Any, str], Any]]:
    """Returns each init field of dataclass `cls` with a convertible declared type, mapped to its converter."""
    if not dataclasses.is_dataclass(cls):
        return {}
    hints = typing.get_type_hints(cls)
    converters = {}
    for field in dataclasses.fields(cls):
        convert = _converter(hints.get(field.name)) if field.init else None
        if convert is not None:
            converters[field.name] = convert
    return converters


_REGISTRY: Dict[str, Type[LearnedOptimizer]] = {}



def register(name: str) -> Callable[[Type[LearnedOptimizer]], Type[LearnedOptimizer]]:
    """Class decorator that makes a LearnedOptimizer dataclass available as `lopt.get(name)`."""

    def decorator(cls: Type[LearnedOptimizer]) -> Type[LearnedOptimizer]:
        if not (isinstance(cls, type) and issubclass(cls, LearnedOptimizer)):
            raise TypeError(f"@register({name!r}) expects a LearnedOptimizer subclass, got {cls!r}")
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"@register({name!r}) expects a dataclass: put "
                            f"@dataclasses.dataclass(frozen=True, kw_only=True) under it on {cls.__name__}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise LearnedOptimizerError(f"a learned optimizer named {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return decorator


def registered_names() -> list:
    """Returns the sorted names of all registered learned and hand-designed optimizers."""
    return sorted(_REGISTRY)


def constructor_arguments(cls: Type[LearnedOptimizer]) -> Tuple[str, ...]:
    """Returns the names of the arguments optimizer class `cls` is built with: its init fields."""
    return tuple(field.name for field in dataclasses.fields(cls) if field.init)


def get(name: str, **kwargs: Any) -> LearnedOptimizer:
    """Returns the registered optimizer `name` constructed with `kwargs`.

    Raises LearnedOptimizerError naming the valid choices for an unknown name or argument.
    """
    if name in LEGACY_OPTIMIZER_NAMES and name not in _REGISTRY:
        # Export files storing a legacy name load silently (lopt.export_format maps it); asking for one warns.
        warnings.warn(f"optimizer name {name!r} is deprecated; use {LEGACY_OPTIMIZER_NAMES[name]!r}",
                      DeprecationWarning, stacklevel=2)
        name = LEGACY_OPTIMIZER_NAMES[name]
    if name not in _REGISTRY:
        raise LearnedOptimizerError(
            f"unknown optimizer {name!r}; registered: {', '.join(registered_names())}"
        )
    cls = _REGISTRY[name]
    valid = constructor_arguments(cls)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise LearnedOptimizerError(
            f"optimizer {name!r} got unknown argument(s) {', '.join(unknown)}; "
            f"valid: {', '.join(valid) or '(none)'}"
        )
    return cls(**kwargs)
