"""Core task types: a `Task` is one training problem, a `TaskFamily` a distribution of them.

Families are pytrees. Every attribute whose value is an array (or a pytree made only of
arrays, such as an `ArrayDataset`) is a leaf; every other attribute is static. This lets the
meta-trainer pass a family, datasets included, into `jax.jit` as an argument instead of
baking megabytes of data into the compiled program as constants.
"""

from __future__ import annotations

from typing import Any, Optional

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


_ARRAY_TYPES = (np.ndarray, jax.Array, jax.ShapeDtypeStruct)


def _is_array_tree(value: Any) -> bool:
    if isinstance(value, _ARRAY_TYPES):
        return True
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return False
    leaves = jax.tree_util.tree_leaves(value)
    return bool(leaves) and all(isinstance(x, _ARRAY_TYPES) for x in leaves)


class _Static:
    """Hashable wrapper that compares static attributes by value, for pytree aux data."""

    __slots__ = ("items",)

    def __init__(self, items: tuple):
        self.items = items

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Static) or len(self.items) != len(other.items):
            return False
        for (ka, va), (kb, vb) in zip(self.items, other.items):
            if ka != kb or type(va) is not type(vb):
                return False
            try:
                same = va == vb
                if not isinstance(same, bool):
                    same = bool(np.all(same))
            except Exception:  # noqa: BLE001 - objects without value equality
                same = va is vb
            if not same:
                return False
        return True

    def __hash__(self) -> int:
        parts = []
        for key, value in self.items:
            try:
                parts.append(hash((key, value)))
            except TypeError:
                parts.append(hash((key, repr(value))))
        return hash(tuple(parts))


class TaskFamily:
    """A distribution over tasks with fixed array shapes, so a batch of its tasks can be vmapped.

    Subclasses set their static shape choices (widths, depth, image size) and their datasets as
    attributes in `__init__`, then implement `sample` and `task`. They are registered as pytrees
    automatically (see the module docstring).
    """

    name: str = "task_family"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_with_keys(
            cls, cls._tree_flatten_with_keys, cls._tree_unflatten, cls._tree_flatten
        )

    def sample(self, key: Array) -> TaskConfig:
        """Returns the configuration of one task: a pytree of arrays (vmappable)."""
        raise NotImplementedError

    def task(self, cfg: TaskConfig) -> Task:
        """Returns the task described by `cfg`; must work when the leaves of `cfg` are tracers."""
        raise NotImplementedError

    def _split_attributes(self):
        # A copy made by unflattening keeps its original's split: JAX unflattens families with
        # placeholder leaves (e.g. when lowering ahead of time), which must not turn data static.
        known_dynamic = self.__dict__.get("_dynamic_names", frozenset())
        known_static = self.__dict__.get("_static_names", frozenset())
        dynamic, static = [], []
        for key in sorted(vars(self)):
            if key in ("_dynamic_names", "_static_names"):
                continue
            value = vars(self)[key]
            if key in known_dynamic:
                is_dynamic = True
            elif key in known_static:
                is_dynamic = False
            else:
                is_dynamic = _is_array_tree(value)
            (dynamic if is_dynamic else static).append((key, value))
        return dynamic, static

    def _tree_flatten(self):
        dynamic, static = self._split_attributes()
        return [v for _, v in dynamic], (tuple(k for k, _ in dynamic), _Static(tuple(static)))

    def _tree_flatten_with_keys(self):
        dynamic, static = self._split_attributes()
        children = [(jax.tree_util.GetAttrKey(k), v) for k, v in dynamic]
        return children, (tuple(k for k, _ in dynamic), _Static(tuple(static)))

    @classmethod
    def _tree_unflatten(cls, aux, children):
        names, static = aux
        obj = object.__new__(cls)
        for key, value in static.items:
            object.__setattr__(obj, key, value)
        for key, value in zip(names, children):
            object.__setattr__(obj, key, value)
        object.__setattr__(obj, "_dynamic_names", frozenset(names))
        object.__setattr__(obj, "_static_names", frozenset(key for key, _ in static.items))
        return obj


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
    def __init__(self, fixed_task: Task, name: str):
        self.fixed_task = fixed_task
        self.name = name

    def sample(self, key: Array) -> TaskConfig:
        return {"unused": jax.numpy.zeros((), jax.numpy.float32)}

    def task(self, cfg: TaskConfig) -> Task:
        return self.fixed_task
