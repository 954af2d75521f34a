"""`validate(family)`: checks a task family does what the meta-trainer relies on, naming the first failed check.

Checks, in order (each raises a one-line TaskError "validate(NAME): check 'CHECK' failed: ..."):
- `pytree`: the family flattens (its `data_fields` to array leaves, no array left static) and rebuilds
  (so it can be passed into jit);
- `sample`: `sample` runs under jit and vmap and gives a pytree of arrays with a task axis;
- `static_shapes`: params and every split's batch have the same structure, shapes and dtypes
  for different tasks and keys, and params are floating point;
- `batch_shapes`: batches have a leading batch axis under vmap (or are None, for data-free
  losses), and labels/features share it;
- `finite_loss`: the loss at init is a finite float32 scalar for every task and split;
- `normalizer`: the normalised loss at init is finite and within `normalizer_range`;
- `gradients`: gradients at init are finite and not all zero;
- `adam_decrease`: for every task, Adam (betas 0.9, 0.999, on the flattened params) at some
  learning rate in `learning_rates` lowers the mean loss of the last quarter of `steps` steps
  below (1 - min_decrease) times the initial loss.
The losses, gradients and Adam runs are one compiled program with the family passed as an
argument, exactly as the meta-trainer runs it; shapes are checked by tracing only.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from tasks.base import SPLITS, TaskError, TaskFamily

Array = jax.Array
_BETAS = (0.9, 0.999)


class ValidationReport(NamedTuple):
    """What `validate` measured: shapes and losses of the tasks it built."""

    family: str
    param_shapes: Dict[str, Tuple[int, ...]]
    batch_shapes: Dict[str, Any]
    initial_loss: np.ndarray
    normalized_initial_loss: np.ndarray
    best_learning_rate: np.ndarray
    final_loss: np.ndarray


def _fail(family: TaskFamily, check: str, detail: str) -> TaskError:
    detail = " ".join(str(detail).split())[:300]
    return TaskError(f"validate({getattr(family, 'name', type(family).__name__)}): check {check!r} failed: {detail}")


def _structure(tree: Any) -> Any:
    return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)


def _split_axis(tree: Any, index: int) -> Any:
    return jax.tree.map(lambda x: x[index], tree)


def validate(
    family: TaskFamily,
    *,
    num_tasks: int = 2,
    steps: int = 30,
    learning_rates: Sequence[float] = (1e-3, 1e-2, 1e-1),
    min_decrease: float = 0.05,
    normalizer_range: Tuple[float, float] = (0.05, 20.0),
    seed: int = 0,
) -> ValidationReport:
    """Runs every check of the module docstring on `family`; returns a report or raises TaskError."""
    if not isinstance(family, TaskFamily):
        raise _fail(family, "pytree", f"expected a TaskFamily, got {type(family).__name__}")
    try:
        leaves, treedef = jax.tree.flatten(family)
        jax.tree.unflatten(treedef, leaves)
    except Exception as error:  # noqa: BLE001 - any failure here means the family cannot enter jit
        raise _fail(family, "pytree", f"{type(error).__name__}: {error}") from None
    bad = [type(x).__name__ for x in leaves if not isinstance(x, (np.ndarray, jax.Array))]
    if bad:
        raise _fail(family, "pytree", f"leaves must be arrays, found {bad[:3]}")
    keys = jax.random.split(jax.random.key(seed), num_tasks)
    cfgs = _sample(family, keys)
    shapes = _shapes(family, cfgs, keys)
    initial, normalized, grads, adam_losses = _run(family, cfgs, keys, steps, learning_rates)
    _check_initial(family, initial, normalized, grads, normalizer_range)
    best_lr, final = _check_adam(family, adam_losses, steps, learning_rates, min_decrease)
    initial = np.asarray(initial["train"])
    return ValidationReport(
        family.name, shapes["params"], shapes["batches"], initial, np.asarray(normalized), best_lr, final
    )


def _sample(family: TaskFamily, keys: Array) -> Any:
    try:
        cfgs = jax.jit(lambda fam, k: jax.vmap(fam.sample)(k))(family, keys)
    except Exception as error:  # noqa: BLE001
        raise _fail(family, "sample", f"sample under jit(vmap) raised {type(error).__name__}: {error}") from None
    leaves = jax.tree.leaves(cfgs)
    if not leaves or any(not hasattr(x, "shape") or x.shape[:1] != (len(keys),) for x in leaves):
        raise _fail(family, "sample", "the task configuration must be a non-empty pytree of arrays (vmappable)")
    return cfgs


def _shapes(family: TaskFamily, cfgs: Any, keys: Array) -> Dict[str, Any]:
    def one(fam, cfg, key):
        task = fam.task(cfg)
        return task.init(key), {s: task.sample_batch(jax.random.fold_in(key, i), s) for i, s in enumerate(SPLITS)}

    try:
        per_task = [jax.eval_shape(one, family, _split_axis(cfgs, i), keys[i]) for i in range(len(keys))]
        params, batches = jax.eval_shape(jax.vmap(one, in_axes=(None, 0, 0)), family, cfgs, keys)
    except TaskError:
        raise
    except Exception as error:  # noqa: BLE001
        detail = f"task/init/sample_batch under jit(vmap) raised {type(error).__name__}: {error}"
        raise _fail(family, "static_shapes", detail) from None
    first = _structure(per_task[0])
    for other in per_task[1:]:
        if _structure(other) != first:
            raise _fail(family, "static_shapes", f"tasks differ in params/batch shapes: {first} vs {_structure(other)}")
    again = jax.eval_shape(one, family, _split_axis(cfgs, 0), jax.random.fold_in(keys[0], 7))
    if _structure(again) != first:
        raise _fail(family, "static_shapes", "batch shapes depend on the key")
    param_leaves = jax.tree.leaves(per_task[0][0])
    if not param_leaves or any(not jnp.issubdtype(x.dtype, jnp.floating) for x in param_leaves):
        raise _fail(family, "static_shapes", "params must be a non-empty pytree of floating-point arrays")
    for split, batch in batches.items():
        leaves = jax.tree.leaves(batch)
        sizes = {x.shape[1] if x.ndim > 1 else None for x in leaves}
        if leaves and (None in sizes or len(sizes) != 1):
            detail = f"split {split!r}: leaves need one shared leading batch axis, got {_structure(batch)}"
            raise _fail(family, "batch_shapes", detail)
    with_paths = jax.tree_util.tree_flatten_with_path(per_task[0][0])[0]
    flat = {jax.tree_util.keystr(path): tuple(x.shape) for path, x in with_paths}
    return {"params": flat, "batches": _structure(per_task[0][1])}


def _run(family: TaskFamily, cfgs: Any, keys: Array, steps: int, learning_rates: Sequence[float]):
    def initial(fam, cfg, key):
        task = fam.task(cfg)
        params = task.init(key)
        losses = {}
        for i, split in enumerate(SPLITS):
            batch = task.sample_batch(jax.random.fold_in(key, i), split)
            losses[split] = task.loss(params, jax.random.fold_in(key, 10 + i), batch)
        return losses, task.normalizer(losses["train"])

    def adam(fam, cfg, key, learning_rate):
        task = fam.task(cfg)
        flat, unravel = ravel_pytree(task.init(key))
        zeros = jnp.zeros_like(flat)

        def step(carry, step_key):
            params, first, second, count = carry
            batch_key, loss_key = jax.random.split(step_key)
            batch = task.sample_batch(batch_key, "train")
            loss, grads = jax.value_and_grad(lambda p: task.loss(unravel(p), loss_key, batch))(params)
            count = count + 1.0
            first = _BETAS[0] * first + (1 - _BETAS[0]) * grads
            second = _BETAS[1] * second + (1 - _BETAS[1]) * jnp.square(grads)
            corrected = (first / (1 - _BETAS[0] ** count)) / (jnp.sqrt(second / (1 - _BETAS[1] ** count)) + 1e-8)
            checks = (jnp.all(jnp.isfinite(grads)), jnp.any(grads != 0))
            return (params - learning_rate * corrected, first, second, count), (loss, checks)

        carry = (flat, zeros, zeros, jnp.zeros((), jnp.float32))
        losses, (finite, nonzero) = jax.lax.scan(step, carry, jax.random.split(key, steps))[1]
        return losses, (finite[0], nonzero[0])

    def both(fam, cfgs, keys, rates):
        losses, normalized = jax.vmap(initial, in_axes=(None, 0, 0))(fam, cfgs, keys)
        over_rates = jax.vmap(adam, in_axes=(None, None, None, 0))
        adam_losses, grad_checks = jax.vmap(over_rates, in_axes=(None, 0, 0, None))(fam, cfgs, keys, rates)
        return losses, normalized, grad_checks, adam_losses

    try:
        return jax.jit(both)(family, cfgs, keys, jnp.asarray(learning_rates, jnp.float32))
    except TaskError:
        raise
    except Exception as error:  # noqa: BLE001
        detail = f"loss or its gradient under jit(vmap) raised {type(error).__name__}: {error}"
        raise _fail(family, "finite_loss", detail) from None


def _check_initial(family, losses, normalized, grads, normalizer_range) -> None:
    num_tasks = len(np.asarray(normalized))
    for split, value in losses.items():
        if value.shape != (num_tasks,) or value.dtype != jnp.float32:
            detail = f"split {split!r}: loss must be a float32 scalar, got {value.dtype} {value.shape[1:]}"
            raise _fail(family, "finite_loss", detail)
        if not np.all(np.isfinite(value)):
            raise _fail(family, "finite_loss", f"split {split!r}: non-finite loss at init {np.asarray(value)}")
    low, high = normalizer_range
    if not np.all(np.isfinite(normalized)) or not np.all((normalized > low) & (normalized < high)):
        raise _fail(family, "normalizer", f"normalised initial loss {np.asarray(normalized)} outside ({low}, {high})")
    finite, nonzero = (np.asarray(g) for g in grads)
    if not np.all(finite):
        raise _fail(family, "gradients", "non-finite gradients at init")
    if not np.all(nonzero):
        raise _fail(family, "gradients", "all gradients are zero at init")


def _check_adam(family, losses, steps, learning_rates, min_decrease):
    losses = np.asarray(losses)
    tail = np.where(np.isfinite(losses), losses, np.inf)[:, :, -max(steps // 4, 1):].mean(axis=2)
    ratio = tail / losses[:, :, 0]
    best = np.argmin(ratio, axis=1)
    worst_task = int(np.argmax(ratio.min(axis=1)))
    if ratio.min(axis=1).max() > 1.0 - min_decrease:
        raise _fail(
            family, "adam_decrease",
            f"task {worst_task}: Adam over {steps} steps at learning rates {tuple(learning_rates)} ended at "
            f"{np.round(ratio[worst_task], 3).tolist()} of the initial loss (need <= {1 - min_decrease:.2f})",
        )
    return np.asarray(learning_rates)[best], tail[np.arange(len(best)), best]
