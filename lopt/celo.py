"""Celo-style learned optimizer: a per-parameter MLP update rule times a learned learning-rate schedule.

The update rule is an MLP over the 28 Adafactor features (no time features, so it cannot
memorise a schedule); the scheduler is a small LSTM that sees only task-agnostic inputs,
training-fraction and loss features, and outputs one learning-rate multiplier exp(z) per step
for the whole model. Its read-out starts at zero (multiplier 1). Meta-training runs in two
phases: first the MLP with the scheduler frozen, then the scheduler with the MLP frozen
(`trainable_mask`). num_steps None means 10k steps for the training fraction.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from lopt import adafactor_features as adafac
from lopt import schedule_features as sched
from lopt.adafac_mlp import adafactor_mlp_steps, require_params
from lopt.base import LearnedOptimizer, LearnedOptimizerError, MetaParams, NumSteps, register
from lopt.lstm import LSTMState, init_lstm, lstm_cell, zero_state
from lopt.small_fc_lopt import init_mlp

Array = jax.Array

PHASES = ("mlp", "scheduler", "all")
MAX_LOG_LR = 20.0


class CeloState(NamedTuple):
    """Adafactor accumulators, the scheduler's LSTM state, loss statistics and the step count."""

    accumulators: adafac.Accumulators
    scheduler: LSTMState
    loss: sched.LossState
    iteration: Array


@register("celo")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Celo(LearnedOptimizer):
    """Per-parameter MLP over Adafactor features, scaled by an LSTM learning-rate scheduler."""

    hidden_sizes: Tuple[int, ...] = (32, 32)
    scheduler_size: int = 16
    step_mult: float = 1e-3
    exp_mult: float = 1e-3

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks the scheduler size."""
        super().__post_init__()
        if self.scheduler_size < 1:
            raise ValueError(f"celo needs scheduler_size >= 1, got {self.scheduler_size}")

    @property
    def num_param_features(self) -> int:
        """Per-parameter Adafactor channels (28)."""
        return adafac.num_features(len(adafac.MOMENTUM_DECAYS), len(adafac.RMS_DECAYS), len(adafac.ADAFACTOR_DECAYS))

    @property
    def num_scheduler_inputs(self) -> int:
        """Training-fraction features plus loss features."""
        return sched.NUM_FRACTION_FEATURES + sched.NUM_LOSS_FEATURES

    def init(self, key: Array) -> MetaParams:
        """Returns {'mlp': update-rule weights, 'scheduler': {'lstm', 'readout' (zero)}}."""
        mlp_key, lstm_key = jax.random.split(key)
        return {
            "mlp": init_mlp(mlp_key, (self.num_param_features, *self.hidden_sizes, 2)),
            "scheduler": {
                "lstm": init_lstm(lstm_key, self.num_scheduler_inputs, self.scheduler_size),
                "readout": {
                    "w": jnp.zeros((self.scheduler_size, 1), jnp.float32),
                    "b": jnp.zeros((1,), jnp.float32),
                },
            },
        }

    def trainable_mask(self, meta_params: MetaParams, phase: str) -> Any:
        """Returns a tree of bools like `meta_params`: True where `phase` ('mlp', 'scheduler' or 'all') trains."""
        if phase not in PHASES:
            raise LearnedOptimizerError(f"optimizer 'celo' has no meta-training phase {phase!r}; it has: {', '.join(PHASES)}")
        return {
            group: jax.tree.map(lambda _: phase in ("all", group), subtree)
            for group, subtree in meta_params.items()
        }

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax transformation defined by `meta_params`."""
        sizes = (len(adafac.MOMENTUM_DECAYS), len(adafac.RMS_DECAYS), len(adafac.ADAFACTOR_DECAYS))
        decays = adafac.Decays(*(jnp.asarray(d, jnp.float32) for d in (
            adafac.MOMENTUM_DECAYS, adafac.RMS_DECAYS, adafac.ADAFACTOR_DECAYS)))
        mlp, scheduler = meta_params["mlp"], meta_params["scheduler"]
        num_layers = len(self.hidden_sizes) + 1
        scheduler_size, step_mult, exp_mult = self.scheduler_size, self.step_mult, self.exp_mult

        def init_fn(params):
            return CeloState(
                adafac.init_accumulators(params, *sizes),
                zero_state((), scheduler_size),
                sched.init_loss_state(),
                jnp.zeros((), jnp.int32),
            )

        def update_fn(grads, state, params=None, loss=None, **extra_args):
            del extra_args
            require_params(params, "celo")
            chex.assert_trees_all_equal_shapes(grads, params)
            accumulators = adafac.update_accumulators(state.accumulators, grads, decays)
            loss_state = sched.update_loss_state(state.loss, loss)
            scheduler_input = jnp.concatenate([
                sched.fraction_features(sched.training_fraction(state.iteration, num_steps)),
                sched.loss_features(loss_state),
            ])
            h, scheduler_state = lstm_cell(scheduler["lstm"], scheduler_input, state.scheduler)
            log_lr = (h @ scheduler["readout"]["w"] + scheduler["readout"]["b"])[0]
            lr_multiplier = jnp.exp(jnp.clip(log_lr, -MAX_LOG_LR, MAX_LOG_LR))

            def tensor_update(g, p, m, v, f):
                steps = adafactor_mlp_steps(mlp, mlp["b0"], num_layers, step_mult, exp_mult, g, p, m, v, f)
                return (-lr_multiplier * steps).astype(p.dtype)

            updates = jax.tree.map(
                tensor_update, grads, params, accumulators.momenta, accumulators.rms, accumulators.factored
            )
            return updates, CeloState(accumulators, scheduler_state, loss_state, state.iteration + 1)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
