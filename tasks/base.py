"""Core task types: a `Task` is one training problem, a `TaskFamily` a distribution of them.

Families are pytrees with declared fields. Each family class names its data, the arrays (or
pytrees of arrays, such as an `ArrayDataset` or another family) that are pytree leaves, in
`data_fields`; every other attribute set in `__init__` is static. The meta-trainer passes a
family into `jax.jit` as an argument, so its datasets are inputs of the compiled program
rather than megabytes of baked-in constants, and a family rebuilt with the same settings has
equal static fields and reuses the compiled program. This is the same split as
`flax.struct.dataclass`, whose `flax.struct.field(pytree_node=False)` marks a static field;
here the data fields are listed instead, so families keep ordinary validating `__init__`s.

Tasks are not pytrees: `family.task(cfg)` builds them inside jit and they never cross it.
"""

from __future__ import annotations

from typing import Any, ClassVar, List, Optional, Sequence, Tuple

import jax
import numpy as np

Params = Any
Batch = Any
TaskConfig = Any
Array = jax.Array

SPLITS = ("train", "valid", "test")


class Task:
    """One concrete training problem: parameter init, a scalar loss and a batch sampler."""

    name: str = "task"

    def init(self, key: Array) -> Params:
        """Returns freshly initialised parameters (a pytree of float arrays)."""
        raise NotImplementedError

    def loss(self, params: Params, key: Array, batch: Batch) -> Array:
        """Returns the scalar float32 loss of `params` on `batch`."""
        raise NotImplementedError

    def sample_batch(self, key: Array, split: str) -> Batch:
        """Returns a batch drawn inside jit from the in-memory `split`, or None if the loss needs no data."""
        return None

    def normalizer(self, loss: Array) -> Array:
        """Maps a raw loss onto the family-wide scale: about 1 at initialisation, towards 0 when trained."""
        return loss

    def domain_features(self) -> Optional[Array]:
        """Returns a small float32 vector describing this problem (e.g. the finance family's asset class and
        volatility), which a learned optimizer reading `domain` features receives as `update(...,
        domain_features=...)`; None (the default): the task has none."""
        return None


_ARRAY_TYPES = (np.ndarray, jax.Array, jax.ShapeDtypeStruct)


def _holds_arrays(value: Any) -> bool:
    return any(isinstance(leaf, _ARRAY_TYPES) for leaf in jax.tree_util.tree_leaves(value))


class _StaticFields:
    """Hashable pytree aux data: a family's static (name, value) pairs, compared by type and value."""

    __slots__ = ("items",)

    def __init__(self, items: Tuple[Tuple[str, Any], ...]):
        self.items = items

    def __eq__(self, other: object) -> bool:
        # Type-strict, so that a static 2 and 2.0 (or True and 1) do not share a compiled program.
        return (
            isinstance(other, _StaticFields)
            and len(self.items) == len(other.items)
            and all(ka == kb and type(va) is type(vb) and va == vb
                    for (ka, va), (kb, vb) in zip(self.items, other.items))
        )

    def __hash__(self) -> int:
        parts = []
        for key, value in self.items:
            try:
                parts.append(hash((key, value)))
            except TypeError:  # lists and dicts: equal values have equal reprs
                parts.append(hash((key, type(value).__name__, repr(value))))
        return hash(tuple(parts))

    def __repr__(self) -> str:
        return "StaticFields(" + ", ".join(f"{key}={value!r}" for key, value in self.items) + ")"


class TaskFamily:
    """A distribution over tasks with fixed array shapes, so a batch of its tasks can be vmapped.

    Subclasses set their static shape choices (widths, depth, image size) and their datasets as
    attributes in `__init__`, list the names of the dataset attributes in `data_fields`, and
    implement `sample` and `task`. Every subclass is registered as a pytree whose leaves are the
    declared data fields, in declared order; see the module docstring.
    """

    name: str = "task_family"
    data_fields: ClassVar[Tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = cls.data_fields
        if not isinstance(fields, tuple) or not all(isinstance(f, str) for f in fields):
            raise TypeError(f"{cls.__name__}.data_fields must be a tuple of attribute names, got {fields!r}")
        if len(set(fields)) != len(fields):
            raise TypeError(f"{cls.__name__}.data_fields names an attribute twice: {fields!r}")
        jax.tree_util.register_pytree_with_keys(
            cls, cls._tree_flatten_with_keys, cls._tree_unflatten, cls._tree_flatten
        )

    def sample(self, key: Array) -> TaskConfig:
        """Returns the configuration of one task: a pytree of arrays (vmappable)."""
        raise NotImplementedError

    def task(self, cfg: TaskConfig) -> Task:
        """Returns the task described by `cfg`; must work when the leaves of `cfg` are tracers."""
        raise NotImplementedError

    def _declared_fields(self) -> Tuple[List[Any], _StaticFields]:
        cls, attributes = type(self), vars(self)
        missing = [name for name in cls.data_fields if name not in attributes]
        if missing:
            raise TypeError(f"{cls.__name__} declares data_fields {missing} but its instance never sets them")
        static = tuple((k, attributes[k]) for k in sorted(attributes) if k not in cls.data_fields)
        for key, value in static:
            if _holds_arrays(value):
                raise TypeError(
                    f"{cls.__name__}.{key} holds arrays but is not declared as data: add {key!r} to "
                    f"{cls.__name__}.data_fields so it is passed into jit as an argument"
                )
        return [attributes[name] for name in cls.data_fields], _StaticFields(static)

    def _tree_flatten(self) -> Tuple[List[Any], _StaticFields]:
        return self._declared_fields()

    def _tree_flatten_with_keys(self) -> Tuple[List[Tuple[Any, Any]], _StaticFields]:
        data, static = self._declared_fields()
        return [(jax.tree_util.GetAttrKey(name), value) for name, value in zip(type(self).data_fields, data)], static

    @classmethod
    def _tree_unflatten(cls, static: _StaticFields, data: Sequence[Any]) -> "TaskFamily":
        family = object.__new__(cls)  # not __init__: leaves may be tracers or placeholders
        for key, value in static.items:
            object.__setattr__(family, key, value)
        for name, value in zip(cls.data_fields, data):
            object.__setattr__(family, name, value)
        return family


class TaskError(ValueError):
    """A task family was configured with impossible or unknown settings, or its data is unusable."""


def check_split(split: str) -> str:
    """Returns `split` if it names a known split, else raises TaskError."""
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def single_task_family(task: Task, name: Optional[str] = None) -> "TaskFamily":
    """Wraps one fixed `Task` as a family whose every sample is that task (for meta-training on one problem)."""
    return _FixedTaskFamily(task, name or task.name)


class _FixedTaskFamily(TaskFamily):
    """Every sample is `fixed_task`; the task is static (not a pytree), so its arrays are compile-time constants."""

    data_fields = ()

    def __init__(self, fixed_task: Task, name: str):
        self.fixed_task = fixed_task
        self.name = name

    def sample(self, key: Array) -> TaskConfig:
        return {"unused": jax.numpy.zeros((), jax.numpy.float32)}

    def task(self, cfg: TaskConfig) -> Task:
        return self.fixed_task
