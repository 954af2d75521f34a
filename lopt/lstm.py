"""A plain LSTM cell as pure functions over a dict of weights, shared by the recurrent learned optimizers."""

from __future__ import annotations

from typing import NamedTuple, Tuple

import jax
import jax.numpy as jnp

from lopt.base import MetaParams

Array = jax.Array


class LSTMState(NamedTuple):
    """Hidden and cell state, each [..., hidden_size]."""

    h: Array
    c: Array


def init_lstm(key: Array, input_size: int, hidden_size: int, forget_bias: float = 1.0) -> MetaParams:
    """Returns LSTM weights {'w_x': [in, 4H], 'w_h': [H, 4H], 'b': [4H]}; gate order input, forget, cell, output."""
    x_key, h_key = jax.random.split(key)
    bias = jnp.zeros((4, hidden_size), jnp.float32).at[1].set(forget_bias).reshape(-1)
    return {
        "w_x": jax.random.normal(x_key, (input_size, 4 * hidden_size), jnp.float32) / jnp.sqrt(input_size),
        "w_h": jax.random.normal(h_key, (hidden_size, 4 * hidden_size), jnp.float32) / jnp.sqrt(hidden_size),
        "b": bias,
    }


def zero_state(batch_shape: Tuple[int, ...], hidden_size: int) -> LSTMState:
    """Returns zero hidden and cell states of shape batch_shape + (hidden_size,)."""
    zeros = jnp.zeros(tuple(batch_shape) + (hidden_size,), jnp.float32)
    return LSTMState(zeros, zeros)


def lstm_cell(params: MetaParams, x: Array, state: LSTMState) -> Tuple[Array, LSTMState]:
    """Advances the LSTM one step on inputs x [..., in]; returns (output h, new state)."""
    gates = x @ params["w_x"] + state.h @ params["w_h"] + params["b"]
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * state.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return h, LSTMState(h, c)
