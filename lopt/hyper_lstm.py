"""VeLO-style hypernetwork: a per-tensor LSTM that sets the weights of a small per-parameter MLP.

For every tensor, an LSTM (weights shared across tensors, state per tensor) reads tensor
statistics, training-fraction features and loss features and emits (a) softmax mixing
coefficients over a bank of `num_bank` small MLPs, whose weighted average is the tensor's
per-parameter MLP, and (b) a learning-rate multiplier exp(lr_scale * z). The per-parameter MLP
reads the 28 Adafactor features and outputs direction and magnitude as in small_fc_lopt.
The read-out starts at zero: uniform mixing and a multiplier of 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from lopt import adafactor_features as adafac
from lopt import schedule_features as sched
from lopt.adafac_mlp import adafactor_mlp_steps, require_params
from lopt.base import LearnedOptimizer, MetaParams, NumSteps, register
from lopt.lstm import LSTMState, init_lstm, lstm_cell, zero_state
from lopt.tensor_map import map_tensors
from lopt.tensor_statistics import num_statistics, tensor_statistics

Array = jax.Array

MAX_LOG_LR = 20.0


class HyperLSTMState(NamedTuple):
    """Adafactor accumulators, one LSTMState per tensor, loss statistics and the step count."""

    accumulators: adafac.Accumulators
    lstm: Any
    loss: sched.LossState
    iteration: Array


def init_bank(key: Array, num_bank: int, num_inputs: int, hidden_size: int) -> MetaParams:
    """Returns a bank of `num_bank` one-hidden-layer MLPs num_inputs -> hidden_size -> 2, stacked on axis 0."""
    k0, k1 = jax.random.split(key)
    return {
        "w0": jax.random.normal(k0, (num_bank, num_inputs, hidden_size), jnp.float32) / jnp.sqrt(num_inputs),
        "b0": jnp.zeros((num_bank, hidden_size), jnp.float32),
        "w1": jax.random.normal(k1, (num_bank, hidden_size, 2), jnp.float32) / jnp.sqrt(hidden_size),
        "b1": jnp.zeros((num_bank, 2), jnp.float32),
    }


def mix_bank(bank: MetaParams, mixing: Array) -> MetaParams:
    """Returns the MLP whose weights are the `mixing`-weighted sum of the bank's weights."""
    return jax.tree.map(lambda w: jnp.tensordot(mixing, w, axes=1), bank)


@register("hyper_lstm")
@dataclasses.dataclass(frozen=True, kw_only=True)
class HyperLSTM(LearnedOptimizer):
    """Per-tensor LSTM hypernetwork over a bank of per-parameter MLPs (VeLO-style, small)."""

    lstm_size: int = 32
    num_bank: int = 8
    mlp_hidden_size: int = 8
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    lr_scale: float = 1.0

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks the sizes."""
        super().__post_init__()
        if min(self.lstm_size, self.num_bank, self.mlp_hidden_size) < 1:
            raise ValueError("hyper_lstm needs lstm_size, num_bank and mlp_hidden_size >= 1")

    @property
    def num_lstm_inputs(self) -> int:
        """Tensor statistics + training-fraction features + loss features."""
        return num_statistics(len(adafac.MOMENTUM_DECAYS)) + sched.NUM_FRACTION_FEATURES + sched.NUM_LOSS_FEATURES

    @property
    def num_param_features(self) -> int:
        """Per-parameter Adafactor channels read by the generated MLP."""
        return adafac.num_features(len(adafac.MOMENTUM_DECAYS), len(adafac.RMS_DECAYS), len(adafac.ADAFACTOR_DECAYS))

    def init(self, key: Array) -> MetaParams:
        """Returns the LSTM, its zero read-out and the MLP bank."""
        lstm_key, bank_key = jax.random.split(key)
        return {
            "lstm": init_lstm(lstm_key, self.num_lstm_inputs, self.lstm_size),
            "readout": {
                "w": jnp.zeros((self.lstm_size, self.num_bank + 1), jnp.float32),
                "b": jnp.zeros((self.num_bank + 1,), jnp.float32),
            },
            "bank": init_bank(bank_key, self.num_bank, self.num_param_features, self.mlp_hidden_size),
        }

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax transformation defined by `meta_params`; num_steps None means 10k steps."""
        sizes = (len(adafac.MOMENTUM_DECAYS), len(adafac.RMS_DECAYS), len(adafac.ADAFACTOR_DECAYS))
        decays = adafac.Decays(*(jnp.asarray(d, jnp.float32) for d in (
            adafac.MOMENTUM_DECAYS, adafac.RMS_DECAYS, adafac.ADAFACTOR_DECAYS)))
        lstm_size, num_bank = self.lstm_size, self.num_bank
        step_mult, exp_mult, lr_scale = self.step_mult, self.exp_mult, self.lr_scale

        def init_fn(params):
            return HyperLSTMState(
                adafac.init_accumulators(params, *sizes),
                jax.tree.map(lambda p: zero_state((), lstm_size), params),
                sched.init_loss_state(),
                jnp.zeros((), jnp.int32),
            )

        def update_fn(grads, state, params=None, loss=None, **extra_args):
            del extra_args
            require_params(params, "hyper_lstm")
            chex.assert_trees_all_equal_shapes(grads, params)
            accumulators = adafac.update_accumulators(state.accumulators, grads, decays)
            loss_state = sched.update_loss_state(state.loss, loss)
            context = jnp.concatenate([
                sched.fraction_features(sched.training_fraction(state.iteration, num_steps)),
                sched.loss_features(loss_state),
            ])

            def tensor_update(g, p, m, v, f, lstm_state: LSTMState):
                lstm_input = jnp.concatenate([tensor_statistics(g, p, m), context])
                h, lstm_state = lstm_cell(meta_params["lstm"], lstm_input, lstm_state)
                readout = h @ meta_params["readout"]["w"] + meta_params["readout"]["b"]
                mlp = mix_bank(meta_params["bank"], jax.nn.softmax(readout[:num_bank]))
                step = adafactor_mlp_steps(mlp, mlp["b0"], 2, step_mult, exp_mult, g, p, m, v, f)
                step = step * jnp.exp(jnp.clip(lr_scale * readout[num_bank], -MAX_LOG_LR, MAX_LOG_LR))
                return (-step).astype(p.dtype), lstm_state

            updates, lstm = map_tensors(
                tensor_update, grads, params, accumulators.momenta, accumulators.rms, accumulators.factored, state.lstm
            )
            return updates, HyperLSTMState(accumulators, lstm, loss_state, state.iteration + 1)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
