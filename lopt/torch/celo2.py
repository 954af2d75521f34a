"""Celo2 ("celo2", lopt/celo2.py) in PyTorch: the learned direction, its Adam branch, learning rate and schedule.

The definitions are lopt.celo2's, computed on each parameter's JAX view (lopt.torch.layout):
the gradient is clipped to +-1000; momenta (0.9, 0.99, 0.999), an rms (0.95) and Adafactor
second moments (0.9, 0.99, 0.999) factored over the view's two largest axes give 30 channels per
parameter (15 for vectors and scalars), each normalised by its second moment over the view's
last two axes; a ReLU MLP 30 -> 8 -> 8 -> 1 gives a direction, which is Newton-Schulz
orthogonalised over the last two axes (when `orthogonalize`) and normalised the same way.
Parameters routed to the Adam branch take `mult_1d * m / sqrt(v + eps)` instead (no bias
correction). The update is `-lr * schedule(t) * (direction + weight_decay * p)`.

Routing: a parameter's path is its name in `model.named_parameters()` with "." replaced by
"/" (`"encoder.0.bias"` -> `"encoder/0/bias"`), and it takes the Adam branch when
`adam_regex` matches it (`re.search`); a group's `branch` setting ("rule" or "adam") overrides
the regex. The exported default regex (`/b$|^scale$`) is haiku's naming: for PyTorch names
pass, e.g., `adam_regex=r"bias$"`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from lopt.torch.base import LearnedRuleOptimizer, float32_zeros

MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
RMS_DECAY = 0.95
ADAFACTOR_DECAYS = (0.9, 0.99, 0.999)
NS_COEFFS = (3.4445, -4.7750, 2.0315)
DEFAULT_ADAM_REGEX = r"/b$|^scale$"
SCHEDULES = ("constant", "cosine", "warmup_cosine")
BRANCHES = (None, "rule", "adam")
NUM_CHANNELS = 30
GRAD_CLIP = 1000.0
HIDDEN_SIZE = 8
# Parameters whose MLP intermediates are evaluated together, to bound memory on large tensors.
COLUMN_BLOCK = 65536
# Constructor arguments fixed by the export file (the rest are parameter-group settings).
ARCHITECTURE_KEYS = ("orthogonalize", "ns_steps", "ns_coeffs", "ns_eps")


def factored_axes(shape: Tuple[int, ...]) -> Optional[Tuple[int, int]]:
    """Returns (largest axis, second largest axis) of `shape` (later axes win ties), None below 2 dims."""
    if len(shape) < 2:
        return None
    order = np.argsort(np.asarray(shape), kind="stable")
    return int(order[-1]), int(order[-2])


def _decays(values: Sequence[float], ndim: int, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).reshape((-1,) + (1,) * ndim)


def _ema(old: torch.Tensor, value: torch.Tensor, decays: Sequence[float]) -> torch.Tensor:
    d = _decays(decays, value.ndim, value.device)
    return d * old + (1.0 - d) * value[None]


def _safe_rsqrt(x: torch.Tensor) -> torch.Tensor:
    return torch.rsqrt(torch.clamp_min(x, 1e-9))


def _normalize_last_two(x: torch.Tensor, num_leading: int) -> torch.Tensor:
    dims = tuple(range(max(num_leading, x.ndim - 2), x.ndim))
    return x * torch.rsqrt(1e-9 + torch.mean(torch.square(x), dim=dims, keepdim=True))


def update_moments(state: Dict[str, Any], g: torch.Tensor) -> None:
    """Advances one tensor's learned-rule accumulators in `state` (created on first use) by its clipped gradient."""
    shape = tuple(g.shape)
    axes = factored_axes(shape)
    k = len(ADAFACTOR_DECAYS)
    if "momenta" not in state:
        state["momenta"] = float32_zeros((len(MOMENTUM_DECAYS),) + shape, g)
        state["rms"] = float32_zeros((1,) + shape, g)
        if axes is None:
            state["full"] = float32_zeros((k,) + shape, g)
        else:
            state["row"] = float32_zeros((k,) + tuple(np.delete(shape, axes[0])), g)
            state["col"] = float32_zeros((k,) + tuple(np.delete(shape, axes[1])), g)
    state["momenta"] = _ema(state["momenta"], g, MOMENTUM_DECAYS)
    state["rms"] = _ema(state["rms"], g * g, (RMS_DECAY,))
    squared = g * g + 1e-30
    if axes is None:
        state["full"] = _ema(state["full"], squared, ADAFACTOR_DECAYS)
    else:
        state["row"] = _ema(state["row"], torch.mean(squared, dim=axes[0]), ADAFACTOR_DECAYS)
        state["col"] = _ema(state["col"], torch.mean(squared, dim=axes[1]), ADAFACTOR_DECAYS)


def factored_rsqrt(state: Dict[str, Any], shape: Tuple[int, ...]) -> torch.Tensor:
    """Returns Adafactor's rsqrt second-moment estimate [3, *shape] of one tensor from its accumulators."""
    axes = factored_axes(shape)
    if axes is None:
        return _safe_rsqrt(state["full"] + 1e-9)
    largest, second = axes
    second_in_row = second - 1 if second > largest else second
    row_mean = torch.mean(state["row"], dim=1 + second_in_row, keepdim=True)
    row_factor = _safe_rsqrt(state["row"] / (row_mean + 1e-9))
    return row_factor.unsqueeze(1 + largest) * _safe_rsqrt(state["col"]).unsqueeze(1 + second)


def tensor_channels(g: torch.Tensor, p: torch.Tensor, state: Dict[str, Any]) -> torch.Tensor:
    """Returns one tensor's unnormalised input channels [30, *shape] (15 below 2 dims), in lopt.celo2's order."""
    shape = tuple(g.shape)
    m, rms = state["momenta"], state["rms"]
    rsqrt_rms = torch.rsqrt(rms + 1e-8)
    factor = factored_rsqrt(state, shape)
    channels = [g[None], torch.clamp(g, -0.1, 0.1)[None], p[None], m, rms, m * rsqrt_rms, rsqrt_rms,
                g[None] * factor, g[None] * rsqrt_rms]
    axes = factored_axes(shape)
    if axes is not None:
        largest, second = axes
        k = state["row"].shape[0]
        row = state["row"].unsqueeze(1 + largest).expand((k,) + shape)
        col = state["col"].unsqueeze(1 + second).expand((k,) + shape)
        channels += [row, col, torch.rsqrt(row + 1e-8), torch.rsqrt(col + 1e-8), m * factor]
    return torch.cat(channels, dim=0)


def newton_schulz(x: torch.Tensor, num_steps: int = 5, coeffs: Sequence[float] = NS_COEFFS,
                  eps: float = 1e-8) -> torch.Tensor:
    """Returns the quintic Newton-Schulz orthogonalisation of `x` over its last two axes, as lopt.celo2 computes it
    (on the Gram matrix when the matrix is at least twice as wide as tall, so float32 rounding matches)."""
    if x.ndim < 2:
        raise ValueError(f"newton_schulz needs a tensor with >= 2 dims, got shape {tuple(x.shape)}")
    a, b, c = coeffs
    transposed = x.shape[-2] > x.shape[-1]
    if transposed:
        x = x.transpose(-2, -1)
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    if x.shape[-1] < 2 * x.shape[-2] or num_steps == 0:
        for _ in range(num_steps):
            gram = x @ x.transpose(-2, -1)
            x = a * x + (b * gram + c * gram @ gram) @ x
    else:
        gram = x @ x.transpose(-2, -1)
        identity = torch.eye(x.shape[-2], dtype=x.dtype, device=x.device)
        product = None
        for step in range(num_steps):
            polynomial = a * identity + b * gram + c * gram @ gram
            product = polynomial if product is None else polynomial @ product
            if step < num_steps - 1:
                gram = polynomial @ (gram @ polynomial)
        x = product @ x
    return x.transpose(-2, -1) if transposed else x


def rule_direction(theta: Dict[str, torch.Tensor], g: torch.Tensor, p: torch.Tensor, state: Dict[str, Any],
                   orthogonalize: bool, ns_steps: int, ns_coeffs: Sequence[float], ns_eps: float) -> torch.Tensor:
    """Returns one tensor's learned direction (float32, shape of `p`) from its clipped gradient and updated state."""
    shape = tuple(p.shape)
    channels = tensor_channels(g, p.float(), state)
    if not shape:
        channels = channels[:, None]
    columns = _normalize_last_two(channels, 1).reshape(channels.shape[0], -1)
    w0 = theta["w0"][:columns.shape[0]].T
    pieces = []
    for block in columns.split(COLUMN_BLOCK, dim=1):
        hidden = torch.relu(w0 @ block + theta["b0"][:, None])
        hidden = torch.relu(theta["w1"].T @ hidden + theta["b1"][:, None])
        pieces.append((theta["w2"].T @ hidden + theta["b2"][:, None])[0])
    direction = torch.cat(pieces).reshape(channels.shape[1:])
    if orthogonalize and len(shape) >= 2:
        direction = newton_schulz(direction, ns_steps, ns_coeffs, ns_eps)
    return _normalize_last_two(direction, 0).reshape(shape)


def schedule_multiplier(schedule: str, count: int, num_steps: Optional[int], warmup_fraction: float,
                        final_fraction: float) -> torch.Tensor:
    """Returns the float32 learning-rate multiplier at 0-based step `count` of a named schedule (lopt.celo2's)."""
    if schedule == "constant":
        return torch.ones((), dtype=torch.float32)
    f32 = lambda v: torch.tensor(v, dtype=torch.float32)
    t = f32(float(count))
    total = torch.clamp_min(f32(float(num_steps)), 1.0)
    warmup = warmup_fraction * total if schedule == "warmup_cosine" else f32(0.0)
    ramp = torch.where(warmup > 0, torch.clamp_max((t + 1.0) / torch.clamp_min(warmup, 1.0), 1.0), f32(1.0))
    progress = torch.clamp((t - warmup) / torch.clamp_min(total - warmup, 1.0), 0.0, 1.0)
    return ramp * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + torch.cos(math.pi * progress)))


class Celo2(LearnedRuleOptimizer):
    """Celo2 (Moudgil et al., ICLR 2026), numerically matching lopt's JAX "celo2" optimizer on the same model.

    Group settings: `lr` (the exported `learning_rate` by default; torch learning-rate schedulers
    change it), the named `schedule` multiplied on top of it ("constant", "cosine",
    "warmup_cosine" over `num_steps`, with `warmup_fraction` and `final_fraction`; keep it
    "constant" when a torch scheduler drives `lr`), `weight_decay`, the Adam branch's
    `adam_regex`, `mult_1d`, `adam_b1`, `adam_b2`, `adam_eps`, a `branch` that overrides the
    regex, and `layout` (see lopt.torch.layout). Routing by regex needs parameter names: pass
    `model.named_parameters()`.
    """

    architecture = "celo2"
    architecture_keys = ARCHITECTURE_KEYS

    def __init__(self, params: Iterable[Any], meta_params: Mapping[str, Any], *, orthogonalize: bool = True,
                 ns_steps: int = 5, ns_coeffs: Sequence[float] = NS_COEFFS, ns_eps: float = 1e-8, lr: float = 1e-3,
                 schedule: str = "constant", num_steps: Optional[int] = None, warmup_fraction: float = 0.05,
                 final_fraction: float = 0.0, weight_decay: float = 0.0, adam_regex: str = DEFAULT_ADAM_REGEX,
                 mult_1d: float = 20.0, adam_b1: float = 0.9, adam_b2: float = 0.95, adam_eps: float = 1e-8,
                 branch: Optional[str] = None, layout: str = "torch"):
        expected = {"w0": (NUM_CHANNELS, HIDDEN_SIZE), "b0": (HIDDEN_SIZE,), "w1": (HIDDEN_SIZE, HIDDEN_SIZE),
                    "b1": (HIDDEN_SIZE,), "w2": (HIDDEN_SIZE, 1), "b2": (1,)}
        found = {k: tuple(torch.as_tensor(v).shape) for k, v in meta_params.items()}
        if found != expected:
            raise ValueError(f"celo2 meta-params have shapes {found}, expected {expected}")
        if len(tuple(ns_coeffs)) != 3 or int(ns_steps) < 0:
            raise ValueError(f"need 3 ns_coeffs and ns_steps >= 0, got {tuple(ns_coeffs)} and {ns_steps}")
        self.orthogonalize, self.ns_steps = bool(orthogonalize), int(ns_steps)
        self.ns_coeffs, self.ns_eps = tuple(float(c) for c in ns_coeffs), float(ns_eps)
        defaults = dict(lr=lr, schedule=schedule, num_steps=num_steps, warmup_fraction=warmup_fraction,
                        final_fraction=final_fraction, weight_decay=weight_decay, adam_regex=adam_regex or "",
                        mult_1d=mult_1d, adam_b1=adam_b1, adam_b2=adam_b2, adam_eps=adam_eps, branch=branch,
                        layout=layout)
        super().__init__(params, meta_params, defaults)

    def check_group(self, group: Dict[str, Any]) -> None:
        """Raises a one-line ValueError for invalid settings, or for regex routing without parameter names."""
        if group["schedule"] not in SCHEDULES:
            raise ValueError(f"unknown schedule {group['schedule']!r}; choose from {', '.join(SCHEDULES)}")
        if group["schedule"] != "constant" and group["num_steps"] is None:
            raise ValueError(f"celo2 with schedule {group['schedule']!r} needs the run length: pass num_steps=N")
        if not (float(group["lr"]) >= 0 and group["weight_decay"] >= 0 and group["mult_1d"] > 0):
            raise ValueError(f"celo2 needs lr >= 0, weight_decay >= 0 and mult_1d > 0; got {group['lr']}, "
                             f"{group['weight_decay']}, {group['mult_1d']}")
        if not (0.0 <= group["warmup_fraction"] < 1.0 and 0.0 <= group["final_fraction"] <= 1.0):
            raise ValueError(f"need 0 <= warmup_fraction < 1 and 0 <= final_fraction <= 1; got "
                             f"{group['warmup_fraction']}, {group['final_fraction']}")
        if group["branch"] not in BRANCHES:
            raise ValueError(f"branch must be None (route by adam_regex), 'rule' or 'adam'; got {group['branch']!r}")
        try:
            re.compile(group["adam_regex"])
        except re.error as error:
            raise ValueError(f"adam_regex {group['adam_regex']!r} is not a regular expression: {error}") from None
        if group["branch"] is None and group["adam_regex"] and "param_names" not in group:
            raise ValueError(f"celo2 routes parameters matching adam_regex {group['adam_regex']!r} to Adam by name: "
                             "pass model.named_parameters(), or set adam_regex='' or branch='rule'/'adam'")

    def tensor_update(self, param: torch.Tensor, grad: torch.Tensor, state: Dict[str, Any], group: Dict[str, Any],
                      name: Optional[str], loss: Optional[torch.Tensor]) -> torch.Tensor:
        """Returns `-lr * schedule(t) * direction` for one parameter (JAX view), advancing its state."""
        del loss
        branch = group["branch"]
        if branch is None:
            branch = "adam" if group["adam_regex"] and re.search(group["adam_regex"], name) else "rule"
        state.setdefault("step", 0)
        if branch == "rule":
            g = torch.clamp(grad.float(), -GRAD_CLIP, GRAD_CLIP)
            update_moments(state, g)
            direction = rule_direction(self.meta_params(param.device), g, param, state, self.orthogonalize,
                                       self.ns_steps, self.ns_coeffs, self.ns_eps)
            direction = direction + group["weight_decay"] * param.float()
        else:
            g = grad.float()
            if "mu" not in state:
                state["mu"], state["nu"] = float32_zeros(g.shape, g), float32_zeros(g.shape, g)
            b1, b2 = group["adam_b1"], group["adam_b2"]
            state["mu"] = b1 * state["mu"] + (1.0 - b1) * g
            state["nu"] = b2 * state["nu"] + (1.0 - b2) * torch.square(g)
            direction = state["mu"] * torch.rsqrt(state["nu"] + group["adam_eps"])
            direction = (direction + group["weight_decay"] * param.float()) * group["mult_1d"]
        multiplier = schedule_multiplier(group["schedule"], state["step"], group["num_steps"],
                                         group["warmup_fraction"], group["final_fraction"])
        state["step"] += 1
        return direction * (-group["lr"] * multiplier).to(direction.device)


def settings_from_config(config: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Returns (architecture arguments, default group settings) of an exported "celo2" optimizer's config."""
    group_keys = ("schedule", "warmup_fraction", "final_fraction", "weight_decay", "adam_regex", "mult_1d",
                  "adam_b1", "adam_b2", "adam_eps")
    unknown = sorted(set(config) - set(ARCHITECTURE_KEYS) - set(group_keys) - {"learning_rate"})
    if unknown:
        raise ValueError(f"the exported celo2 optimizer sets {', '.join(unknown)}, which lopt.torch does not implement")
    group = {k: config[k] for k in group_keys if k in config}
    if "learning_rate" in config:
        group["lr"] = config["learning_rate"]
    return {k: config[k] for k in ARCHITECTURE_KEYS if k in config}, group


__all__ = ["ARCHITECTURE_KEYS", "Celo2", "factored_axes", "newton_schulz", "rule_direction", "schedule_multiplier", "settings_from_config",
           "tensor_channels", "update_moments"]
