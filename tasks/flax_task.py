"""`from_flax(model, data, loss)`: a flax.linen module, an in-memory dataset and a loss as a TaskFamily.

Linen, not nnx: a linen module is a frozen dataclass, hashable and compared by its fields, so
it is a static attribute of the family, and `model.init` / `model.apply` are pure functions of
a params pytree, which is exactly what a vmapped, jitted task needs. An nnx module holds its
weights as mutable object state that would have to be split off and merged back in every loss
call. Models must keep all their variables in the `params` collection (no batch statistics).

Data is one of: a tuple `(x, y)` of arrays (split by `splits` fractions with a fixed seed);
a scikit-learn Bunch (its `data` and `target`); a dict `{"train": ..., "valid": ..., "test": ...}`
whose values are `(x, y)` tuples or data sources; or a data source, anything with `__len__` and
`__getitem__` returning dicts (a TFDS `data_source`), read into arrays from its `source_keys`.
Arrays are used as given (standardise features beforehand); float64 becomes float32.

Per-task variations that keep shapes are declared as arguments and drawn by `sample`:
`init_scale=(low, high)`, a log-uniform multiplier of the model's initial params;
`label_noise=p` or `(low, high)`, the fraction of train labels replaced by a different class
(fixed per task and example, so each task sees one corrupted train set; cross-entropy only);
`subset=fraction`, each task trains on its own random subset of that fraction of the train split.
Weight reparameterisation is `tasks.reparameterize(from_flax(...))` or `config.task.reparameterize`.

Loss: `"cross_entropy"` (integer labels, logits), `"mse"`, or a function `(outputs, labels) ->
per-example losses`, averaged over the batch. Normaliser: loss / log(num_classes) for
cross-entropy, loss / variance of the train labels for mse, loss / the mean loss at init for a
function, unless `normalizer=` gives the divisor.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks import tfds_source
from tasks.base import SPLITS, Array, Task, TaskError, TaskFamily, check_split

Params = Any
Batch = Tuple[Array, Array]
FlaxConfig = Dict[str, Array]
LossFn = Callable[[Array, Array], Array]
Range = Union[float, Tuple[float, float]]
NumpySplits = Dict[str, Tuple[np.ndarray, np.ndarray]]

_SPLIT_SEED = 0
_NORMALIZER_BATCHES = 4


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Returns the per-example softmax cross-entropy of `logits` [batch, classes] and integer `labels` [batch]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))


def mean_squared_error(outputs: Array, targets: Array) -> Array:
    """Returns the per-example mean squared error; outputs such as [batch, 1] are reshaped to the targets' shape."""
    difference = outputs.reshape(targets.shape) - targets
    return jnp.mean(jnp.square(difference).reshape(targets.shape[0], -1), axis=1)


LOSSES: Dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mean_squared_error}


class FlaxTask(Task):
    """One task of a `FlaxFamily`: the family's model, data and loss with this task's sampled variations."""

    def __init__(self, family: "FlaxFamily", cfg: FlaxConfig):
        self.family = family
        self.cfg = cfg
        self.name = family.name

    def init(self, key: Array) -> Params:
        """Returns `model.init`'s params, times the task's init scale if one is declared."""
        shape, dtype = self.family.input_spec
        rngs = {"params": key, "dropout": jax.random.fold_in(key, 1)}
        params = self.family.model.init(rngs, jnp.zeros(shape, dtype))["params"]
        if "init_scale" not in self.cfg:
            return params
        return jax.tree.map(lambda p: (p * self.cfg["init_scale"]).astype(p.dtype), params)

    def sample_batch(self, key: Array, split: str) -> Batch:
        """Draws (x, y) rows of `split` with replacement inside jit; train rows come from the task's subset and
        carry its label noise."""
        family = self.family
        num_rows = dict(family.num_examples)[check_split(split)]
        if split == "train" and "subset" in self.cfg:
            rows = self.cfg["subset"][jax.random.randint(key, (family.batch_size,), 0, family.subset_size)]
        else:
            rows = jax.random.randint(key, (family.batch_size,), 0, num_rows)
        x, y = family.x[split][rows], family.y[split][rows]
        if split == "train" and "label_noise" in self.cfg:
            y = self.noisy_labels(rows, y)
        return x, y

    def noisy_labels(self, rows: Array, labels: Array) -> Array:
        """Returns `labels` with each train row's label replaced, with the task's probability, by another class."""
        task_key = jax.random.key(self.cfg["seed"])
        draws = jax.vmap(lambda row: jax.random.uniform(jax.random.fold_in(task_key, row), (2,)))(rows)
        num_classes = self.family.num_classes
        shift = 1 + jnp.minimum(jnp.floor(draws[:, 1] * (num_classes - 1)), num_classes - 2).astype(labels.dtype)
        return jnp.where(draws[:, 0] < self.cfg["label_noise"], (labels + shift) % num_classes, labels)

    def loss(self, params: Params, key: Array, batch: Batch) -> Array:
        """Returns the batch mean of the family's per-example loss of `model.apply` on `batch` (float32)."""
        x, y = batch
        outputs = self.family.model.apply({"params": params}, x, rngs={"dropout": key})
        return jnp.mean(self.family.loss_fn(outputs, y)).astype(jnp.float32)

    def normalizer(self, loss: Array) -> Array:
        """Returns loss divided by the family's loss scale (see the module docstring)."""
        return loss / self.family.loss_scale


class FlaxFamily(TaskFamily):
    """A flax.linen model on in-memory data with a loss; tasks differ only in their declared variations.

    cfg fields: `seed` (int32) always; `init_scale` (float32), `label_noise` (float32) and `subset`
    (int32 train row indices) when declared.
    """

    name = "flax_task"
    data_fields = ("x", "y")

    def __init__(
        self,
        model: Any,
        data: Any,
        loss: Union[str, LossFn] = "cross_entropy",
        *,
        batch_size: int = 128,
        splits: Sequence[float] = (0.8, 0.1, 0.1),
        init_scale: Optional[Range] = None,
        label_noise: Optional[Range] = None,
        subset: Optional[float] = None,
        normalizer: Optional[float] = None,
        source_keys: Tuple[str, str] = ("image", "label"),
        max_examples: int = 200_000,
        name: Optional[str] = None,
    ):
        if not (callable(getattr(model, "init", None)) and callable(getattr(model, "apply", None))):
            raise TaskError(f"from_flax expects a flax.linen Module, got {type(model).__name__}")
        if isinstance(loss, str) and loss not in LOSSES:
            raise TaskError(f"from_flax has no loss {loss!r}; expected one of {', '.join(LOSSES)} or a function")
        if not (isinstance(loss, str) or callable(loss)):
            raise TaskError(f"from_flax loss must be a name or a function (outputs, labels) -> losses, got {loss!r}")
        if int(batch_size) < 1:
            raise TaskError(f"from_flax batch_size must be positive, got {batch_size}")
        if name is not None:
            self.name = str(name)
        self.model = model
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", "custom")
        self.loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
        self.batch_size = int(batch_size)
        arrays = _as_splits(data, splits, source_keys, int(max_examples))
        if self.loss_name == "cross_entropy" and isinstance(loss, str):
            arrays = {s: (x, _integer_labels(y, s)) for s, (x, y) in arrays.items()}
        self.x = {s: jnp.asarray(x) for s, (x, _) in arrays.items()}
        self.y = {s: jnp.asarray(y) for s, (_, y) in arrays.items()}
        self.num_examples = tuple((s, int(arrays[s][0].shape[0])) for s in SPLITS)
        self.input_spec = ((1,) + tuple(arrays["train"][0].shape[1:]), str(self.x["train"].dtype))
        outputs = self._check_model()
        self.num_classes = int(outputs.shape[-1]) if loss == "cross_entropy" else None
        if self.num_classes is not None:
            largest = max(int(np.max(y)) for _, y in arrays.values())
            if outputs.ndim != 2 or largest >= self.num_classes:
                raise TaskError(f"from_flax: cross_entropy needs logits [batch, classes] with more than {largest} "
                                f"classes, but the model outputs shape {tuple(outputs.shape)}")
        self.init_scale_range = _range("init_scale", init_scale, positive=True)
        self.label_noise_range = _range("label_noise", label_noise, positive=False)
        if self.label_noise_range is not None and (self.num_classes is None or self.num_classes < 2):
            raise TaskError("from_flax label_noise needs loss='cross_entropy' with at least 2 classes")
        self.subset_size = _subset_size(subset, dict(self.num_examples)["train"])
        self.loss_scale = self._loss_scale(normalizer, arrays["train"][1])

    def _check_model(self) -> Any:
        """Returns the shape of the model's outputs on a batch, after checking init, apply and the loss trace."""
        shape, dtype = self.input_spec
        batch = jax.ShapeDtypeStruct((self.batch_size,) + shape[1:], dtype)
        labels = jax.ShapeDtypeStruct((self.batch_size,) + self.y["train"].shape[1:], self.y["train"].dtype)
        try:
            variables = jax.eval_shape(lambda k: self.model.init({"params": k, "dropout": k}, jnp.zeros(shape, dtype)),
                                       jax.random.key(0))
        except Exception as error:  # noqa: BLE001 - the user's model: report whatever it raised on one line
            raise TaskError(f"from_flax: model.init on inputs of shape {shape} raised {_one_line(error)}") from None
        extra = sorted(set(variables) - {"params"})
        if extra or "params" not in variables:
            raise TaskError(f"from_flax supports models whose only variables are 'params'; this one also has {extra}")
        try:
            outputs = jax.eval_shape(lambda v, x: self.model.apply(v, x, rngs={"dropout": jax.random.key(0)}),
                                     variables, batch)
            losses = jax.eval_shape(self.loss_fn, outputs, labels)
        except Exception as error:  # noqa: BLE001
            raise TaskError(f"from_flax: model.apply or the {self.loss_name} loss on a batch of inputs "
                            f"{batch.shape} and labels {labels.shape} raised {_one_line(error)}") from None
        if losses.shape not in ((), (self.batch_size,)):
            raise TaskError(f"from_flax: the loss must give one value per example, shape ({self.batch_size},), "
                            f"got {losses.shape}")
        return outputs

    def _loss_scale(self, normalizer: Optional[float], train_labels: np.ndarray) -> float:
        """Returns the divisor that maps the loss to about 1 at initialisation."""
        if normalizer is not None:
            if not (isinstance(normalizer, (int, float)) and normalizer > 0 and math.isfinite(normalizer)):
                raise TaskError(f"from_flax normalizer must be a positive number, got {normalizer!r}")
            return float(normalizer)
        if self.loss_name == "cross_entropy" and self.num_classes is not None:
            return math.log(self.num_classes) if self.num_classes > 1 else 1.0
        if self.loss_fn is mean_squared_error:
            variance = float(np.var(np.asarray(train_labels, np.float64)))
            return variance if variance > 0 else 1.0
        return self._measured_initial_loss()

    def _measured_initial_loss(self) -> float:
        def initial_loss(family: FlaxFamily, key: Array) -> Array:
            task = FlaxTask(family, {"seed": jnp.zeros((), jnp.int32)})
            params_key, batch_key = jax.random.split(key)
            return task.loss(task.init(params_key), batch_key, task.sample_batch(batch_key, "train"))

        keys = jax.random.split(jax.random.key(_SPLIT_SEED), _NORMALIZER_BATCHES)
        value = float(jnp.mean(jax.jit(jax.vmap(initial_loss, in_axes=(None, 0)))(self, keys)))
        if not (math.isfinite(value) and value > 0):
            raise TaskError(f"from_flax: the loss at init is {value}; pass normalizer= (a positive loss scale)")
        return value

    def sample(self, key: Array) -> FlaxConfig:
        """Samples the task's seed and each declared variation."""
        seed_key, scale_key, noise_key, subset_key = jax.random.split(key, 4)
        cfg = {"seed": jax.random.randint(seed_key, (), 0, np.iinfo(np.int32).max, jnp.int32)}
        if self.init_scale_range is not None:
            low, high = (math.log(v) for v in self.init_scale_range)
            cfg["init_scale"] = jnp.exp(jax.random.uniform(scale_key, (), jnp.float32, low, high))
        if self.label_noise_range is not None:
            cfg["label_noise"] = jax.random.uniform(noise_key, (), jnp.float32, *self.label_noise_range)
        if self.subset_size is not None:
            num_train = dict(self.num_examples)["train"]
            rows = jax.random.choice(subset_key, num_train, (self.subset_size,), replace=False)
            cfg["subset"] = rows.astype(jnp.int32)
        return cfg

    def task(self, cfg: FlaxConfig) -> FlaxTask:
        """Builds the task described by `cfg` (works with traced cfg and family leaves)."""
        return FlaxTask(self, cfg)


def from_flax(
    model: Any,
    data: Any,
    loss: Union[str, LossFn] = "cross_entropy",
    **options: Any,
) -> FlaxFamily:
    """Returns a task family training the flax.linen `model` on `data` with `loss` (options: see FlaxFamily)."""
    return FlaxFamily(model, data, loss, **options)


def _one_line(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"


def _range(label: str, value: Optional[Range], *, positive: bool) -> Optional[Tuple[float, float]]:
    """Returns `value` as a (low, high) pair of floats, a number `v` as (v, v), or None; TaskError if invalid."""
    if value is None:
        return None
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, float)) for v in pair):
        raise TaskError(f"from_flax {label} must be a number or a (low, high) pair, got {value!r}")
    low, high = float(pair[0]), float(pair[1])
    valid = 0 < low <= high if positive else 0 <= low <= high <= 1
    if not valid:
        bounds = "0 < low <= high" if positive else "0 <= low <= high <= 1"
        raise TaskError(f"from_flax {label} needs {bounds}, got {value!r}")
    return low, high


def _subset_size(subset: Optional[float], num_train: int) -> Optional[int]:
    """Returns the number of train rows each task keeps, or None for all."""
    if subset is None:
        return None
    if not (isinstance(subset, (int, float)) and 0 < subset <= 1):
        raise TaskError(f"from_flax subset must be a fraction in (0, 1], got {subset!r}")
    return max(1, int(round(subset * num_train)))


def _integer_labels(labels: np.ndarray, split: str) -> np.ndarray:
    """Returns class labels as int32 [N], or raises TaskError if they are not non-negative integers."""
    if labels.ndim != 1 or (labels.size and (np.any(labels < 0) or np.any(labels != np.round(labels)))):
        raise TaskError(f"from_flax: cross_entropy needs non-negative integer class labels of shape [N]; "
                        f"the {split} labels have shape {labels.shape} and dtype {labels.dtype}")
    return labels.astype(np.int32)


def _as_arrays(x: Any, y: Any, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """Returns x and y as numpy arrays (float64 as float32) with one example per row; TaskError if they disagree."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise TaskError(f"from_flax: {where} x and y must have one row per example, got shapes {x.shape} and {y.shape}")
    if x.shape[0] == 0:
        raise TaskError(f"from_flax: {where} has no examples")
    cast = lambda a: a.astype(np.float32) if a.dtype == np.float64 else a  # noqa: E731
    return cast(x), cast(y)


def _is_source(data: Any) -> bool:
    return hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, (np.ndarray, tuple, list))


def _read_source(source: Any, keys: Tuple[str, str], max_examples: int, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """Reads every example of a data source into (x, y) arrays from its `keys` fields."""
    size = len(source)
    if size > max_examples:
        raise TaskError(f"from_flax: {where} has {size} examples, more than max_examples={max_examples}; "
                        f"pass a larger max_examples or fewer examples")
    examples = tfds_source.read_examples(source, range(size))
    missing = [k for k in keys if examples and k not in examples[0]]
    if missing:
        found = sorted(examples[0]) if isinstance(examples[0], Mapping) else type(examples[0]).__name__
        raise TaskError(f"from_flax: {where} examples have no field(s) {missing} (found {found}); set source_keys=")
    return _as_arrays(np.stack([e[keys[0]] for e in examples]), np.stack([e[keys[1]] for e in examples]), where)


def _as_splits(data: Any, splits: Sequence[float], keys: Tuple[str, str], max_examples: int) -> NumpySplits:
    """Returns {"train", "valid", "test"} -> (x, y) numpy arrays from any accepted form of `data`."""
    if isinstance(data, Mapping) and "data" in data and "target" in data:  # a scikit-learn Bunch
        return _split(*_as_arrays(data["data"], data["target"], "data"), splits)
    if isinstance(data, Mapping):
        if set(data) != set(SPLITS):
            raise TaskError(f"from_flax: a dict of splits needs exactly the keys {', '.join(SPLITS)}, got {sorted(data)}")
        return {s: _one_split(data[s], keys, max_examples, f"split {s!r}") for s in SPLITS}
    if isinstance(data, (tuple, list)) or _is_source(data):
        return _split(*_one_split(data, keys, max_examples, "data"), splits)
    raise TaskError(f"from_flax data must be (x, y), a dict of splits, a scikit-learn Bunch or a data source; "
                    f"got {type(data).__name__}")


def _one_split(data: Any, keys: Tuple[str, str], max_examples: int, where: str) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise TaskError(f"from_flax: {where} must be a pair (x, y), got {len(data)} items")
        return _as_arrays(data[0], data[1], where)
    if _is_source(data):
        return _read_source(data, keys, max_examples, where)
    raise TaskError(f"from_flax: {where} must be (x, y) or a data source, got {type(data).__name__}")


def _split(x: np.ndarray, y: np.ndarray, fractions: Sequence[float]) -> NumpySplits:
    """Returns a fixed-seed random split of (x, y) into train, valid and test by `fractions`."""
    fractions = tuple(fractions)
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-6:
        raise TaskError(f"from_flax splits must be three positive fractions (train, valid, test) summing to at most 1, "
                        f"got {fractions}")
    sizes = [int(len(x) * f) for f in fractions]
    if min(sizes) < 1:
        raise TaskError(f"from_flax: {len(x)} examples are too few for splits {fractions} (a split would be empty)")
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(x))
    bounds = np.cumsum([0] + sizes)
    return {s: (x[order[a:b]], y[order[a:b]]) for s, a, b in zip(SPLITS, bounds[:-1], bounds[1:])}
