"""Celo exactly as its authors' code (amoudgl/celo on google/learned_optimization) computes it.

This project's `celo` was written from the paper: 28 features, a 32-32 MLP, a 16-unit LSTM
over our own fraction and loss features. The released Celo weights need the authors'
definitions, reproduced here:

- per-parameter MLP (hidden 4-4, 3 outputs of which 2 are used) over 30 features in 14 groups
  (`FEATURE_GROUPS`, see `lopt.lo_features`), each group normalised per tensor; gradients are
  clipped to +-1000 first; no time features;
- the step is `direction * rms(p) * exp(magnitude * exp_mult) * step_mult`, with
  `rms(p) = sqrt(mean(p^2) + 1e-9)` per tensor, times the scheduler's multiplier in phase 2;
- the scheduler reads 9 features `tanh(10 (t / num_steps - c))` and 9 loss features (ten
  loss EMAs with half-lives log-spaced from 10 to num_steps), passes them through a mixing
  layer and a haiku-convention LSTM (gates i, g, f, o; forget bias +1; a learned initial
  state), and outputs `0.1 exp(z)` plus the softmax weights over `param_inits` MLPs.

Every tensor of the reference's per-tensor LSTM sees the same inputs from the same initial
state, so one LSTM row is computed and shared by all tensors. Updates are finite for finite
inputs, but, as in the reference, the derivative of `m * v ** -0.5` (vectors and scalars) is
0 * inf where a gradient is exactly zero: meta-train it with ES estimators, as its authors did.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import lo_features
from lopt import schedule_features
from lopt.adafac_mlp_lo import check_decay_counts, truncated_normal_mlp
from lopt.base import LearnedOptimizer, LearnedOptimizerError, MetaParams, NumSteps, register

Array = jax.Array

FEATURE_GROUPS = ("g", "clipped_g", "p", "m", "rms", "m_rsqrt_rms", "rsqrt_rms", "preconditioned_g", "g_rsqrt_rms",
                  "row", "col", "rsqrt_row", "rsqrt_col", "m_preconditioned")
FRACTION_CENTERS = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
NUM_LOSS_DECAYS = 10
NUM_SCHEDULER_INPUTS = len(FRACTION_CENTERS) + NUM_LOSS_DECAYS - 1
GRAD_CLIP = 1000.0
PHASES = ("mlp", "scheduler", "all")


class LossBuffer(NamedTuple):
    """EMAs of the loss with `decays`, their bias-corrected running minima, and how many losses were seen."""

    means: Array
    running_min: Array
    decays: Array
    iteration: Array


class CeloLOState(NamedTuple):
    """Accumulators, the scheduler's LSTM state `(hidden, cell)`, the loss buffer and the step count."""

    accumulators: lo_features.Accumulators
    hidden: Array
    cell: Array
    loss: LossBuffer
    iteration: Array


def init_loss_buffer(num_steps: Any) -> LossBuffer:
    """Returns an empty loss buffer whose half-lives are log-spaced from 10 to `num_steps` steps."""
    decays = jnp.exp(-1.0 / jnp.logspace(1, jnp.log10(num_steps), NUM_LOSS_DECAYS))
    zeros = jnp.zeros((NUM_LOSS_DECAYS,), jnp.float32)
    return LossBuffer(zeros, 999999999999.0 * jnp.ones_like(zeros), decays, jnp.asarray(0, jnp.int32))


def update_loss_buffer(buffer: LossBuffer, loss: Array) -> LossBuffer:
    """Folds `loss` (clipped to twice the largest bias-corrected mean) into the buffer."""
    corrected = buffer.means / (1 - buffer.decays ** (buffer.iteration + 1))
    approx_max = jnp.where(buffer.iteration == 0, loss, jnp.max(corrected))
    loss = jnp.minimum(jnp.abs(approx_max) * 2, loss)
    means = buffer.means * buffer.decays + loss * (1.0 - buffer.decays)
    corrected = means / (1 - buffer.decays ** (buffer.iteration + 1))
    return LossBuffer(means, jnp.minimum(buffer.running_min, corrected), buffer.decays, buffer.iteration + 1)


def loss_features(buffer: LossBuffer) -> Array:
    """Returns 9 values in [-1, 1]: each faster EMA's position between its minimum and the next slower EMA, minus 1."""
    corrected = buffer.means / (1 - buffer.decays ** buffer.iteration)
    running_min = buffer.running_min[:-1]
    relative = (corrected[:-1] - running_min) / jnp.maximum(1e-8, corrected[1:] - running_min)
    feature = jnp.clip(relative - 1.0, -1, 1)
    return jnp.where(buffer.iteration <= 2, feature * 0, feature)


def haiku_lstm(params: MetaParams, x: Array, hidden: Array, cell: Array) -> Tuple[Array, Array]:
    """Returns the next `(hidden, cell)` of a haiku LSTM: one linear layer over [x, hidden], gates i, g, f, o."""
    gates = jnp.concatenate([x, hidden], axis=-1) @ params["w"] + params["b"]
    i, g, f, o = jnp.split(gates, 4, axis=-1)
    cell = jax.nn.sigmoid(f + 1) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(cell), cell


@register("celo_lo")
@dataclasses.dataclass(frozen=True, kw_only=True)
class CeloLO(LearnedOptimizer):
    """Celo as published (phase 2 = the authors' meta-testing configuration): MLP update times an LSTM schedule.

    `train_phase=1` leaves the schedule out (the authors' first meta-training phase).
    `trainable_mask` knows the phases 'mlp', 'scheduler' and 'all'.
    """

    hidden_sizes: Tuple[int, ...] = (4, 4)
    lstm_size: int = 64
    param_inits: int = 1
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    train_phase: int = 2
    momentum_decays: Tuple[float, ...] = (0.9, 0.99, 0.999)
    rms_decays: Tuple[float, ...] = (0.999,)
    adafactor_decays: Tuple[float, ...] = (0.9, 0.99, 0.999)

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks the decay counts, sizes and phase."""
        super().__post_init__()
        check_decay_counts(self.momentum_decays, self.rms_decays, self.adafactor_decays)
        if not self.hidden_sizes or min(self.hidden_sizes) < 1 or self.lstm_size < 1 or self.param_inits < 1:
            raise LearnedOptimizerError(
                f"celo_lo needs positive hidden_sizes, lstm_size and param_inits; got {self.hidden_sizes}, "
                f"{self.lstm_size}, {self.param_inits}")
        if self.train_phase not in (1, 2):
            raise LearnedOptimizerError(f"celo_lo train_phase must be 1 or 2, got {self.train_phase}")

    @property
    def group_sizes(self) -> Tuple[int, ...]:
        """Channels of each feature group in FEATURE_GROUPS order (30 in all with the default decays)."""
        m, r, f = len(self.momentum_decays), len(self.rms_decays), len(self.adafactor_decays)
        per_group = {"g": 1, "clipped_g": 1, "p": 1, "m": m, "rms": r, "m_rsqrt_rms": m, "rsqrt_rms": r,
                     "preconditioned_g": f, "g_rsqrt_rms": r, "row": f, "col": f, "rsqrt_row": f, "rsqrt_col": f,
                     "m_preconditioned": m}
        return tuple(per_group[name] for name in FEATURE_GROUPS)

    def init(self, key: Array) -> MetaParams:
        """Returns {'mlp': `param_inits` stacked MLPs [P, ...], 'scheduler': the LSTM, its layers and initial state}."""
        mlp_key, mix_key, input_key, lstm_key, out_key = jax.random.split(key, 5)
        size = self.lstm_size

        def linear(k, fan_in, fan_out):
            return truncated_normal_mlp(k, (fan_in, fan_out))

        rename = lambda layer: {"w": layer["w0"], "b": layer["b0"]}
        controls_key, step_key = jax.random.split(out_key)
        return {
            "mlp": truncated_normal_mlp(mlp_key, (sum(self.group_sizes), *self.hidden_sizes, 3), (self.param_inits,)),
            "scheduler": {
                "initial_state": {"hidden": jnp.zeros((size,), jnp.float32), "cell": jnp.zeros((size,), jnp.float32)},
                "mix": rename(linear(mix_key, NUM_SCHEDULER_INPUTS, size)),
                "input": rename(linear(input_key, NUM_SCHEDULER_INPUTS, size)),
                "lstm": rename(linear(lstm_key, 2 * size, 4 * size)),
                "controls": rename(linear(controls_key, size, self.param_inits)),
                "step_size": rename(linear(step_key, size, 1)),
            },
        }

    def trainable_mask(self, meta_params: MetaParams, phase: str = "all") -> Any:
        """Returns a tree of bools like `meta_params`: True where `phase` ('mlp', 'scheduler' or 'all') trains."""
        if phase not in PHASES:
            raise LearnedOptimizerError(
                f"optimizer 'celo_lo' has no meta-training phase {phase!r}; it has: {', '.join(PHASES)}")
        return {group: jax.tree.map(lambda _: phase in ("all", group), subtree)
                for group, subtree in meta_params.items()}

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax transformation; `num_steps` None means schedule_features.DEFAULT_NUM_STEPS."""
        total_steps = schedule_features.DEFAULT_NUM_STEPS if num_steps is None else num_steps
        mlp, scheduler = meta_params["mlp"], meta_params["scheduler"]
        num_layers = len(self.hidden_sizes) + 1
        group_sizes = self.group_sizes
        counts = (len(self.momentum_decays), len(self.rms_decays), len(self.adafactor_decays))
        decays = lo_features.Decays(*(jnp.asarray(d, jnp.float32) for d in (
            self.momentum_decays, self.rms_decays, self.adafactor_decays)))
        step_mult, exp_mult, use_schedule = self.step_mult, self.exp_mult, self.train_phase > 1

        def init_fn(params):
            initial = scheduler["initial_state"]
            return CeloLOState(lo_features.init_accumulators(params, *counts), jnp.asarray(initial["hidden"]),
                               jnp.asarray(initial["cell"]), init_loss_buffer(total_steps), jnp.asarray(0, jnp.int32))

        def schedule(state: CeloLOState, buffer: LossBuffer) -> Tuple[Array, Array, Array, Array]:
            fraction = state.iteration / jnp.asarray(total_steps, jnp.float32)
            fraction_embedding = jnp.tanh((fraction - jnp.asarray(FRACTION_CENTERS, jnp.float32)) * 10)
            x = jnp.concatenate([fraction_embedding, loss_features(buffer)])[None]
            mixed = jax.nn.relu(x @ scheduler["mix"]["w"] + scheduler["mix"]["b"])
            x = x @ scheduler["input"]["w"] + scheduler["input"]["b"] + jnp.max(mixed, axis=0, keepdims=True)
            hidden, cell = haiku_lstm(scheduler["lstm"], x, state.hidden[None], state.cell[None])
            controls = jax.nn.softmax(hidden @ scheduler["controls"]["w"] + scheduler["controls"]["b"])[0]
            lr_mult = jnp.exp(jnp.squeeze(hidden @ scheduler["step_size"]["w"] + scheduler["step_size"]["b"], -1)) * 0.1
            return controls, lr_mult[0], hidden[0], cell[0]

        def tensor_update(weights, lr_mult, p, g, m, v, y, moments):
            p32 = lo_features.as_tensor(p).astype(jnp.float32)
            groups = lo_features.feature_groups(g, p32, m, v, y, moments)
            first_weights = jnp.split(weights["w0"], np.cumsum(group_sizes)[:-1].tolist(), axis=0)
            out = jnp.zeros(g.shape + weights["w0"].shape[1:], jnp.float32)
            for name, w in zip(FEATURE_GROUPS, first_weights):
                out = out + lo_features.second_moment_normalize(groups[name]) @ w
            out = out + weights["b0"]
            for i in range(1, num_layers):
                out = jax.nn.relu(out) @ weights[f"w{i}"] + weights[f"b{i}"]
            param_scale = jnp.sqrt(jnp.mean(jnp.square(p32)) + 1e-9)
            step = out[..., 0] * (param_scale * jnp.exp(out[..., 1] * exp_mult)) * step_mult
            if use_schedule:
                step = lr_mult * step
            return (-step).reshape(jnp.shape(p)).astype(jnp.result_type(p))

        def update_fn(grads, state, params=None, loss: Optional[Array] = None, **extra_args):
            del extra_args
            if params is None:
                raise ValueError("the celo_lo learned optimizer needs params: call update(grads, state, params)")
            if loss is None:
                raise ValueError("the celo_lo learned optimizer needs the loss: call update(..., loss=loss)")
            chex.assert_trees_all_equal_shapes(grads, params)
            buffer = update_loss_buffer(state.loss, jnp.asarray(loss, jnp.float32).reshape(()))
            grads = jax.tree.map(
                lambda g: jnp.clip(lo_features.as_tensor(g).astype(jnp.float32), -GRAD_CLIP, GRAD_CLIP), grads)
            controls, lr_mult, hidden, cell = schedule(state, buffer)
            weights = jax.tree.map(
                lambda w: jnp.mean(w * controls.reshape((-1,) + (1,) * (w.ndim - 1)), axis=0), mlp)
            accumulators, preconditioned = lo_features.update_accumulators(state.accumulators, grads, decays)
            leaves, treedef = jax.tree.flatten(params)
            per_leaf = [treedef.flatten_up_to(tree) for tree in (
                grads, accumulators.momenta, accumulators.rms, preconditioned, accumulators.factored)]
            updates = [tensor_update(weights, lr_mult, p, *(tree[i] for tree in per_leaf))
                       for i, p in enumerate(leaves)]
            new_state = CeloLOState(accumulators, hidden, cell, buffer, state.iteration + 1)
            return treedef.unflatten(updates), new_state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
