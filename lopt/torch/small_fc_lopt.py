"""small_fc_lopt (lopt/small_fc_lopt.py) in PyTorch: the same per-parameter MLP update as the JAX optimizer.

Per parameter the MLP reads the gradient, the parameter and six momenta, each scaled per
tensor by `rsqrt(1e-5 + mean square)` after clipping to +-1e18, plus time features
`tanh(t / tau - 1)` (and, with `fraction_features`, how much of `num_steps` is done), and
outputs `direction * exp(magnitude * exp_mult) * step_mult`, which is subtracted from the
parameter. Everything but the maximal-update factor is elementwise or over the whole tensor,
so only `mup` depends on the layout: its fan-in is the product of all axes of the JAX view but
the last (`in * kernel` for a PyTorch `[out, in, *kernel]` weight in the default layout).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from lopt.torch.base import LearnedRuleOptimizer, float32_zeros

MOMENTUM_DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
FRACTION_CENTERS = (0.1, 0.25, 0.5, 0.75, 0.9)
DEFAULT_NUM_STEPS = 10_000
CLIP = 1e18
# Parameters whose [hidden, columns] intermediates are evaluated together, to bound memory on large tensors.
COLUMN_BLOCK = 65536
# Tensors smaller than this are packed together; larger ones are processed alone, bounding the packed copies.
PACK_LIMIT = 65536
# Constructor arguments of the JAX optimizer that change how its update is computed, not what it computes.
COMPUTATION_ONLY_KEYS = ("block_size", "concurrent_chunks")
# Constructor arguments fixed by the export file (the rest are parameter-group settings).
ARCHITECTURE_KEYS = ("hidden_sizes", "step_mult", "exp_mult", "momentum_decays", "time_scales", "fraction_features")


def mup_step_scale(shape: Sequence[int]) -> float:
    """Returns the maximal-update factor of a tensor with JAX-view `shape`: 1 / fan_in for rank >= 2, else 1."""
    return 1.0 / math.prod(shape[:-1]) if len(shape) >= 2 else 1.0


def time_inputs(step: int, time_scales: torch.Tensor, num_steps: Optional[int],
                fraction_centers: Optional[torch.Tensor]) -> torch.Tensor:
    """Returns the features shared by every parameter at 0-based `step`: tanh(step / scale - 1) for each time scale,
    then, when `fraction_centers` is given, the training fraction f = step / num_steps (None: DEFAULT_NUM_STEPS)
    clipped to [0, 1] and tanh(10 (f - c)) for each centre c."""
    t = torch.tensor(float(step), dtype=torch.float32, device=time_scales.device)
    inputs = [torch.tanh(t / time_scales - 1.0)]
    if fraction_centers is not None:
        total = torch.tensor(float(max(DEFAULT_NUM_STEPS if num_steps is None else num_steps, 1)),
                             dtype=torch.float32, device=t.device)
        fraction = torch.clamp(t / total, 0.0, 1.0)
        inputs += [fraction[None], torch.tanh(10.0 * (fraction - fraction_centers))]
    return torch.cat(inputs)


class SmallFCLOpt(LearnedRuleOptimizer):
    """small_fc_lopt (Metz et al. 2022), numerically matching lopt's JAX small_fc_lopt on the same model.

    Group settings: `lr` multiplies the learned step (1.0, the default, is the step the rule was
    meta-trained to take; a torch learning-rate scheduler scales it), `mup` divides each weight's
    step by its fan-in (muLO; the default is the exported optimizer's), `num_steps` is the run
    length read by optimizers exported with `fraction_features`, and `layout` ("torch" or "jax",
    see lopt.torch.layout) says how a weight's axes map to the JAX model's.
    """

    architecture = "small_fc_lopt"
    architecture_keys = ARCHITECTURE_KEYS

    def __init__(self, params: Iterable[Any], meta_params: Mapping[str, Any], *,
                 hidden_sizes: Sequence[int] = (32, 32), step_mult: float = 1e-3, exp_mult: float = 1e-3,
                 momentum_decays: Sequence[float] = MOMENTUM_DECAYS, time_scales: Sequence[float] = TIME_SCALES,
                 fraction_features: bool = False, lr: float = 1.0, mup: bool = False,
                 num_steps: Optional[int] = None, layout: str = "torch"):
        self.step_mult, self.exp_mult = float(step_mult), float(exp_mult)
        self.momentum_decays = tuple(float(d) for d in momentum_decays)
        self.time_scales = tuple(float(t) for t in time_scales)
        self.fraction_features = bool(fraction_features)
        num_inputs = 2 + len(self.momentum_decays) + len(self.time_scales) + (6 if self.fraction_features else 0)
        sizes = (num_inputs, *(int(h) for h in hidden_sizes), 2)
        self.num_layers = len(sizes) - 1
        expected = {}
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            expected[f"w{i}"], expected[f"b{i}"] = (fan_in, fan_out), (fan_out,)
        found = {k: tuple(torch.as_tensor(v).shape) for k, v in meta_params.items()}
        if found != expected:
            raise ValueError(f"small_fc_lopt meta-params have shapes {found}, expected {expected}")
        self._constants: Dict[Tuple[Any, ...], torch.Tensor] = {}
        defaults = dict(lr=lr, mup=mup, num_steps=num_steps, layout=layout)
        super().__init__(params, meta_params, defaults)

    def check_group(self, group: Dict[str, Any]) -> None:
        """Raises a one-line ValueError for a negative `lr`, a non-boolean `mup` or a non-positive `num_steps`."""
        if not float(group["lr"]) >= 0.0:
            raise ValueError(f"small_fc_lopt needs lr >= 0, got {group['lr']}")
        if not isinstance(group["mup"], bool):
            raise ValueError(f"mup must be True or False, got {group['mup']!r}")
        if group["num_steps"] is not None and not int(group["num_steps"]) >= 1:
            raise ValueError(f"num_steps must be a positive number of steps or None, got {group['num_steps']}")

    def tensor_update(self, param: torch.Tensor, grad: torch.Tensor, state: Dict[str, Any], group: Dict[str, Any],
                      name: Optional[str], loss: Optional[torch.Tensor]) -> torch.Tensor:
        """Returns `-lr * step` for one parameter (JAX view), advancing its momenta and step count."""
        return self.group_updates([param], [grad], [state], group, [name], loss)[0]

    def group_updates(self, params: List[torch.Tensor], grads: List[torch.Tensor], states: List[Dict[str, Any]],
                      group: Dict[str, Any], names: List[Optional[str]], loss: Optional[torch.Tensor]) -> List[torch.Tensor]:
        """Returns `-lr * step` for a group's parameters (JAX views), advancing their states. Tensors of fewer than
        PACK_LIMIT entries at the same step go through the MLP together, as the JAX optimizer packs small
        tensors; larger ones go alone, so no packed copy of a large model's inputs is made."""
        del names, loss
        for param, state in zip(params, states):
            if not state:
                state["step"] = 0
                state["momenta"] = float32_zeros((len(self.momentum_decays), param.numel()), param)
        batches = []
        for step in sorted({state["step"] for state in states}):
            chosen = [i for i, state in enumerate(states) if state["step"] == step]
            small = [i for i in chosen if params[i].numel() < PACK_LIMIT]
            batches += ([(step, small)] if small else []) + [(step, [i]) for i in chosen if i not in small]
        updates: List[Optional[torch.Tensor]] = [None] * len(params)
        for step, chosen in batches:
            columns = self._features([params[i] for i in chosen], [grads[i] for i in chosen],
                                     [states[i] for i in chosen])
            steps = self._steps(columns, step, group["num_steps"], params[chosen[0]].device)
            for i, piece in zip(chosen, steps.split([params[i].numel() for i in chosen])):
                if group["mup"]:
                    piece = piece * mup_step_scale(tuple(params[i].shape))
                updates[i] = (-piece * float(group["lr"]) if group["lr"] != 1.0 else -piece).reshape(params[i].shape)
                states[i]["step"] += 1
        return updates

    def _features(self, params: List[torch.Tensor], grads: List[torch.Tensor],
                  states: List[Dict[str, Any]]) -> torch.Tensor:
        """Advances the tensors' momenta and returns their inputs `[2 + num_decays, total size]`, each tensor's
        channels scaled by rsqrt(1e-5 + mean square over that tensor) after clipping to +-1e18."""
        decays = self._constant("decays", self.momentum_decays, params[0].device)[:, None]
        columns = []
        for param, grad, state in zip(params, grads, states):
            g = grad.reshape(-1).float()
            state["momenta"] = state["momenta"] * decays + g[None] * (1.0 - decays)
            rows = torch.cat([g[None], param.reshape(1, -1).float(), state["momenta"]]).clamp(-CLIP, CLIP)
            columns.append(rows * torch.rsqrt(1e-5 + torch.mean(torch.square(rows), dim=1, keepdim=True)))
        return columns[0] if len(columns) == 1 else torch.cat(columns, dim=1)

    def _constant(self, name: str, values: Sequence[float], device: torch.device) -> torch.Tensor:
        key = (name, device)
        if key not in self._constants:
            self._constants[key] = torch.tensor(values, dtype=torch.float32, device=device)
        return self._constants[key]

    def _steps(self, columns: torch.Tensor, step: int, num_steps: Optional[int], device: torch.device) -> torch.Tensor:
        theta = self.meta_params(device)
        num_param_features = columns.shape[0]
        shared = time_inputs(step, self._constant("time_scales", self.time_scales, device), num_steps,
                             self._constant("centers", FRACTION_CENTERS, device) if self.fraction_features else None)
        first_bias = (shared @ theta["w0"][num_param_features:] + theta["b0"])[:, None]
        first_weight = theta["w0"][:num_param_features].T
        pieces = []
        for block in columns.split(COLUMN_BLOCK, dim=1):
            hidden = first_weight @ block + first_bias
            for i in range(1, self.num_layers):
                hidden = theta[f"w{i}"].T @ torch.relu(hidden) + theta[f"b{i}"][:, None]
            pieces.append(hidden[0] * torch.exp(hidden[1] * self.exp_mult) * self.step_mult)
        return torch.cat(pieces)


def settings_from_config(config: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Returns (architecture arguments, default group settings) of an exported small_fc_lopt's config."""
    unknown = sorted(set(config) - set(ARCHITECTURE_KEYS) - {"mup", *COMPUTATION_ONLY_KEYS})
    if unknown:
        raise ValueError(f"the exported small_fc_lopt sets {', '.join(unknown)}, which lopt.torch does not implement")
    architecture = {k: config[k] for k in ARCHITECTURE_KEYS if k in config}
    return architecture, {"mup": bool(config.get("mup", False))}


__all__ = ["ARCHITECTURE_KEYS", "SmallFCLOpt", "mup_step_scale", "settings_from_config", "time_inputs"]
