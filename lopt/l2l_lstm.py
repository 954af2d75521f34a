"""L2L (Andrychowicz et al. 2016): a coordinatewise 2-layer LSTM, shared by every parameter, outputs the update.

Each gradient coordinate g is preprocessed into two inputs,
[max(log|g| / p, -1), clip(g * e^p, -1, 1)] with p = 10 (log magnitude and sign for
|g| >= e^-p, a scaled value below), and the LSTM's linear read-out times `output_scale` is
added to the parameter. The hidden and cell states of every layer live in the optimizer state.

With `loss_input=True` the LSTM also reads the training loss, preprocessed the same way and
shared by every coordinate (four inputs): the optimizer of the few-shot worked example, which
reads each parameter's gradient and the loss. It then needs `update(..., loss=LOSS)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import optax

from lopt.base import LearnedOptimizer, MetaParams, NumSteps, register
from lopt.lstm import LSTMState, init_lstm, lstm_cell, zero_state
from lopt.tensor_map import map_tensors

Array = jax.Array


class L2LState(NamedTuple):
    """Per-parameter LSTM states (a tuple over layers of LSTMState, each [..., hidden]) and the step count."""

    hidden: Any
    iteration: Array


def preprocess_gradient(g: Array, p: float = 10.0) -> Array:
    """Returns L2L's [max(log|g| / p, -1), clip(g e^p, -1, 1)] as a trailing axis of size 2."""
    g = g.astype(jnp.float32)
    magnitude = jnp.log(jnp.maximum(jnp.abs(g), jnp.exp(-p))) / p
    scaled = jnp.clip(g * jnp.exp(p), -1.0, 1.0)
    return jnp.stack([magnitude, scaled], axis=-1)


@register("l2l_lstm")
@dataclasses.dataclass(frozen=True, kw_only=True)
class L2LLSTM(LearnedOptimizer):
    """Coordinatewise LSTM optimizer: num_layers layers of hidden_size units, shared across all parameters."""

    hidden_size: int = 20
    num_layers: int = 2
    preprocess_p: float = 10.0
    output_scale: float = 0.1
    loss_input: bool = False

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks the sizes."""
        super().__post_init__()
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError(f"l2l_lstm needs hidden_size >= 1 and num_layers >= 1, got {self.hidden_size}, "
                             f"{self.num_layers}")

    @property
    def num_inputs(self) -> int:
        """Inputs of the first LSTM layer: the preprocessed gradient, and the preprocessed loss if read."""
        return 4 if self.loss_input else 2

    def init(self, key: Array) -> MetaParams:
        """Returns the LSTM layers and a linear read-out with small weights."""
        keys = jax.random.split(key, self.num_layers + 1)
        params = {}
        for layer in range(self.num_layers):
            input_size = self.num_inputs if layer == 0 else self.hidden_size
            params[f"lstm_{layer}"] = init_lstm(keys[layer], input_size, self.hidden_size)
        params["output"] = {
            "w": 0.1 * jax.random.normal(keys[-1], (self.hidden_size, 1), jnp.float32) / jnp.sqrt(self.hidden_size),
            "b": jnp.zeros((1,), jnp.float32),
        }
        return params

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax transformation that runs the LSTM with weights `meta_params`."""
        del num_steps
        hidden_size, num_layers = self.hidden_size, self.num_layers
        preprocess_p, output_scale, loss_input = self.preprocess_p, self.output_scale, self.loss_input

        def init_fn(params):
            hidden = jax.tree.map(
                lambda p: tuple(zero_state(p.shape, hidden_size) for _ in range(num_layers)), params
            )
            return L2LState(hidden, jnp.zeros((), jnp.int32))

        def tensor_update(g: Array, layers: Tuple[LSTMState, ...], first_layer: MetaParams):
            x = preprocess_gradient(g, preprocess_p)
            new_layers = []
            for layer, layer_state in enumerate(layers):
                weights = first_layer if layer == 0 else meta_params[f"lstm_{layer}"]
                x, layer_state = lstm_cell(weights, x, layer_state)
                new_layers.append(layer_state)
            out = x @ meta_params["output"]["w"] + meta_params["output"]["b"]
            return (output_scale * out[..., 0]).astype(g.dtype), tuple(new_layers)

        def update_fn(grads, state, params=None, loss=None, **extra_args):
            del params, extra_args
            first_layer = meta_params["lstm_0"]
            if loss_input:
                if loss is None:
                    raise ValueError("l2l_lstm with loss_input=True reads the loss: call update(grads, state, params, "
                                     "loss=LOSS)")
                # The loss is the same for every coordinate, so its input weights fold into the first layer's bias.
                loss_features = preprocess_gradient(jnp.asarray(loss, jnp.float32), preprocess_p)
                first_layer = dict(first_layer, w_x=first_layer["w_x"][:2],
                                   b=first_layer["b"] + loss_features @ first_layer["w_x"][2:])
            updates, hidden = map_tensors(lambda g, layers: tensor_update(g, layers, first_layer), grads, state.hidden)
            return updates, L2LState(hidden, state.iteration + 1)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
