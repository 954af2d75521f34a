"""What a training loop passes to a learned optimizer's `update` besides gradients: the loss, and the extra
arguments the optimizer lists in `extra_update_args` (a Hutchinson Hessian-diagonal estimate, a task's domain vector).

`loss_gradient_and_update_args` is the one place the meta-trainer's unroll and lopt-evaluate compute
them, and any JAX loop can call it too. An optimizer that lists nothing costs exactly one
`jax.value_and_grad`, as before; one that lists `hessian_diag` costs one forward-over-reverse
Hessian-vector product instead, which returns the loss, the gradient and H z together.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp

Array = jax.Array
# The arguments a loop can supply; `loss` is always passed.
KNOWN_ARGUMENTS = ("loss", "hessian_diag", "domain_features")
# Loops derive the probe's key as fold_in(the step's loss key, PROBE_SALT), leaving their other keys unchanged.
PROBE_SALT = 0x4E55


def hutchinson_probe(key: Array, params: Any) -> Any:
    """Returns a Rademacher (+-1, equally likely) pytree shaped and typed like `params`."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    signs = [jax.random.rademacher(k, jnp.shape(x), jnp.float32).astype(jnp.result_type(x))
             for k, x in zip(keys, leaves)]
    return jax.tree.unflatten(treedef, signs)


def hutchinson_diagonal(loss_fn: Callable[[Any], Array], params: Any, probe: Any) -> Tuple[Array, Any, Any]:
    """Returns `(loss, gradient, probe * (H probe))` of `loss_fn` at `params` from one forward-over-reverse pass.

    With a Rademacher probe z, E[z * (H z)] = diag(H): coordinate i is H_ii + sum_{j != i} H_ij z_i z_j.
    """
    (loss, grads), (_, hessian_probe) = jax.jvp(jax.value_and_grad(loss_fn), (params,), (probe,))
    return loss, grads, jax.tree.map(lambda z, hz: z * hz, probe, hessian_probe)


def wanted_arguments(optimizer: Any) -> Tuple[str, ...]:
    """Returns the extra `update()` arguments `optimizer` reads (its `extra_update_args`, () when it has none)."""
    wanted = tuple(getattr(optimizer, "extra_update_args", ()))
    unknown = [name for name in wanted if name not in KNOWN_ARGUMENTS]
    if unknown:
        raise ValueError(f"optimizer asks for update argument(s) {', '.join(unknown)} that no loop supplies; "
                         f"known: {', '.join(KNOWN_ARGUMENTS)}")
    return wanted


def loss_gradient_and_update_args(
    optimizer: Any,
    loss_fn: Callable[[Any], Array],
    params: Any,
    *,
    probe_key: Optional[Array] = None,
    domain_features: Union[None, Array, Callable[[], Optional[Array]]] = None,
) -> Tuple[Array, Any, Dict[str, Any]]:
    """Returns `(loss, gradient, update keyword arguments)` for one step of `optimizer` on `loss_fn` at `params`.

    The keyword arguments always hold `loss`; `hessian_diag` (Hutchinson, from a probe drawn with
    `probe_key`) only if the optimizer reads it, and `domain_features` only if it reads them and
    the caller has some (otherwise the optimizer's default applies). `domain_features` is a
    vector or a function returning one or None (a task's `domain_features` method), called only
    when the optimizer reads them.
    """
    wanted = wanted_arguments(optimizer)
    if "hessian_diag" in wanted:
        if probe_key is None:
            raise ValueError("this optimizer reads hessian_diag: pass probe_key to draw the Hutchinson probe")
        loss, grads, diagonal = hutchinson_diagonal(loss_fn, params, hutchinson_probe(probe_key, params))
        arguments: Dict[str, Any] = {"loss": loss, "hessian_diag": diagonal}
    else:
        loss, grads = jax.value_and_grad(loss_fn)(params)
        arguments = {"loss": loss}
    if "domain_features" in wanted:
        values = domain_features() if callable(domain_features) else domain_features
        if values is not None:
            arguments["domain_features"] = values
    return loss, grads, arguments
