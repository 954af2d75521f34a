"""The `torch.optim.Optimizer` that every exported learned rule runs in: groups, layouts, closures, state dicts.

A rule sees one parameter at a time in its JAX view (lopt.torch.layout) and returns that
tensor's additive update, exactly as the JAX rule's optax transformation would; this class
does the PyTorch side: parameter groups and their settings, `step(closure)`, the loss, the
layout mapping, float32 state for low-precision parameters and `state_dict` round trips.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch

from lopt.torch.layout import check_layout, from_jax_layout, to_jax_layout

# Keys torch itself puts into parameter groups (named parameters, learning-rate schedulers).
_TORCH_GROUP_KEYS = ("params", "param_names", "initial_lr")


class LearnedRuleOptimizer(torch.optim.Optimizer):
    """A trained learned optimizer as a `torch.optim.Optimizer`; subclasses implement `tensor_update`.

    `step(closure=None, *, loss=None)` returns the loss: the closure's when one is given (it is
    called with gradients enabled, as `torch.optim.LBFGS` does), else `loss`. Rules that read
    the training loss take it from there; the rules shipped so far (small_fc_lopt, Celo2) do not
    read it, so passing it is optional. Parameters without a gradient are skipped and keep their
    state. State tensors are float32 whatever the parameter's dtype, also after `load_state_dict`.
    """

    architecture = "learned_rule"
    architecture_keys: Tuple[str, ...] = ()

    def __init__(self, params: Iterable[Any], meta_params: Mapping[str, Any], defaults: Dict[str, Any]):
        self._meta_params = {name: torch.from_numpy(np.array(value, np.float32)) for name, value in meta_params.items()}
        self._meta_params_by_device: Dict[torch.device, Dict[str, torch.Tensor]] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """Adds a parameter group (see torch.optim.Optimizer), rejecting settings this optimizer does not have."""
        if isinstance(param_group, dict):
            unknown = sorted(set(param_group) - set(self.defaults) - set(_TORCH_GROUP_KEYS))
            if unknown:
                raise ValueError(f"{self.architecture} has no setting {', '.join(map(repr, unknown))}; "
                                 f"settings: {', '.join(sorted(self.defaults))}")
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_layout(group["layout"])
        self.check_group(group)

    def check_group(self, group: Dict[str, Any]) -> None:
        """Raises a one-line ValueError if a parameter group's settings are invalid; subclasses extend it."""

    def meta_params(self, device: torch.device) -> Dict[str, torch.Tensor]:
        """Returns the meta-parameters as float32 tensors on `device` (copied there once)."""
        if device not in self._meta_params_by_device:
            self._meta_params_by_device[device] = {k: v.to(device) for k, v in self._meta_params.items()}
        return self._meta_params_by_device[device]

    def tensor_update(self, param: torch.Tensor, grad: torch.Tensor, state: Dict[str, Any], group: Dict[str, Any],
                      name: Optional[str], loss: Optional[torch.Tensor]) -> torch.Tensor:
        """Returns the additive float32 update of one parameter from its JAX views `param` and `grad`, advancing
        `state` (empty on the first step); `name` is the parameter's "/"-joined path, None if unnamed."""
        raise NotImplementedError

    def group_updates(self, params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict[str, Any]],
                      group: Dict[str, Any], names: List[Optional[str]], loss: Optional[torch.Tensor]) -> List[torch.Tensor]:
        """Returns the updates of one group's parameters that have gradients (JAX views), advancing their states:
        `tensor_update` for each by default; a rule overrides it to evaluate its network on all of them at once."""
        return [self.tensor_update(p, g, s, group, n, loss) for p, g, s, n in zip(params, grads, states, names)]

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None, *, loss: Any = None) -> Any:
        """Updates every parameter that has a gradient; returns the closure's loss, else `loss`."""
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        loss_value = None if loss is None else torch.as_tensor(loss).detach().float().reshape(())
        for group in self.param_groups:
            layout = group["layout"]
            names = group.get("param_names") or [None] * len(group["params"])
            chosen = [(p, n) for p, n in zip(group["params"], names) if p.grad is not None]
            for param, name in chosen:
                if param.grad.is_sparse or param.is_complex():
                    raise ValueError(f"{self.architecture} supports dense real parameters and gradients only; "
                                     f"got a {'sparse gradient' if param.grad.is_sparse else param.dtype} "
                                     f"for {name or tuple(param.shape)}")
            if not chosen:
                continue
            updates = self.group_updates([to_jax_layout(p, layout) for p, _ in chosen],
                                         [to_jax_layout(p.grad, layout) for p, _ in chosen],
                                         [self.state[p] for p, _ in chosen], group,
                                         [None if n is None else n.replace(".", "/") for _, n in chosen], loss_value)
            for (param, _), update in zip(chosen, updates):
                param.add_(from_jax_layout(update, layout).to(param.dtype))
        return loss

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Loads a `state_dict()`; unlike torch's default, floating-point state stays float32 for any parameter dtype."""
        super().load_state_dict(state_dict)
        saved_ids = itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = itertools.chain.from_iterable(g["params"] for g in self.param_groups)
        for saved_id, param in zip(saved_ids, params):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                if torch.is_tensor(value) and value.is_floating_point():
                    self.state[param][key] = value.to(device=param.device, dtype=torch.float32, copy=True)


def float32_zeros(shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Returns a float32 zero tensor of `shape` on `like`'s device."""
    return torch.zeros(shape, dtype=torch.float32, device=like.device)


__all__ = ["LearnedRuleOptimizer", "float32_zeros"]
