"""Li & Malik (2016), "Learning to Optimize": a policy that maps the recent history of a run to the step.

The state is the last `history_length` (H = 25) iterations of, for every parameter coordinate,
the change in location and the gradient, and the change in objective value (shared by all
coordinates). A network with one hidden layer of `hidden_size` (50) softplus units maps each
coordinate's 3H numbers to that coordinate's step; the network is shared by all coordinates, so
one policy applies to problems of any dimension. The history holds raw values, as in the paper;
slots before the first iterations are zero.

The change in location at iteration t is params_t - params_{t-1}, the step actually taken
(under a policy-gradient estimator that includes the exploration noise), and the change in
objective is loss_t - loss_{t-1}; so the optimizer needs `params` and `loss` in every update.
The network's output is multiplied by a learned step size exp(s), a scalar meta-parameter, so that
the overall scale of the steps, which spans orders of magnitude between problem classes, is
learned on a log scale. At initialisation the policy is exactly gradient descent at
`init_learning_rate`: s = log(init_learning_rate), two hidden units read the current gradient with
weights +1 and -1 and their read-outs are -1 and +1 (softplus(g) - softplus(-g) = g), and every
other read-out starts at zero.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopt.base import LearnedOptimizer, MetaParams, NumSteps, register

Array = jax.Array


class LiMalikState(NamedTuple):
    """Histories, most recent first: per-parameter [..., H] location changes and gradients, [H] objective changes;
    the previous iterate and loss; the iteration count."""

    location_changes: Any
    gradients: Any
    objective_changes: Array
    previous_params: Any
    previous_loss: Array
    iteration: Array


def _push(history: Array, newest: Array) -> Array:
    """Returns `history` [..., H] shifted by one with `newest` [...] in slot 0."""
    return jnp.concatenate([newest[..., None], history[..., :-1]], axis=-1)


@register("li_malik_policy")
@dataclasses.dataclass(frozen=True, kw_only=True)
class LiMalikPolicy(LearnedOptimizer):
    """Coordinate-wise history policy: [location changes, objective changes, gradients] over H steps -> MLP -> step,
    times a learned step size."""

    history_length: int = 25
    hidden_size: int = 50
    init_learning_rate: float = 0.1

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks them."""
        super().__post_init__()
        if self.history_length < 1 or self.hidden_size < 2:
            raise ValueError(f"li_malik_policy needs history_length >= 1 and hidden_size >= 2, got "
                             f"{self.history_length}, {self.hidden_size}")
        if not self.init_learning_rate > 0:
            raise ValueError(f"li_malik_policy needs init_learning_rate > 0, got {self.init_learning_rate}")

    @property
    def num_inputs(self) -> int:
        """Inputs per coordinate: H location changes, H objective changes and H gradients."""
        return 3 * self.history_length

    def init(self, key: Array) -> MetaParams:
        """Returns the network at gradient descent with rate `init_learning_rate` (see the module docstring)."""
        history, hidden = self.history_length, self.hidden_size
        w = jax.random.normal(key, (self.num_inputs, hidden), jnp.float32) / math.sqrt(self.num_inputs)
        current_gradient = 2 * history  # inputs are [location changes, objective changes, gradients], newest first
        w = w.at[:, :2].set(0.0).at[current_gradient, 0].set(1.0).at[current_gradient, 1].set(-1.0)
        readout = jnp.zeros((hidden,), jnp.float32).at[0].set(-1.0).at[1].set(1.0)
        return {"hidden": {"w": w, "b": jnp.zeros((hidden,), jnp.float32)},
                "output": {"w": readout, "b": jnp.zeros((), jnp.float32)},
                "log_step_size": jnp.asarray(math.log(self.init_learning_rate), jnp.float32)}

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax transformation running the policy network with weights `meta_params`."""
        del num_steps
        history_length = self.history_length

        def init_fn(params):
            def zeros(p):
                return jnp.zeros(jnp.shape(p) + (history_length,), jnp.float32)

            return LiMalikState(
                location_changes=jax.tree.map(zeros, params), gradients=jax.tree.map(zeros, params),
                objective_changes=jnp.zeros((history_length,), jnp.float32),
                previous_params=jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params),
                previous_loss=jnp.zeros((), jnp.float32), iteration=jnp.zeros((), jnp.int32))

        def step(location_history: Array, gradient_history: Array, objective_history: Array) -> Array:
            objective = jnp.broadcast_to(objective_history, location_history.shape)
            features = jnp.concatenate([location_history, objective, gradient_history], axis=-1)
            hidden = jax.nn.softplus(features @ meta_params["hidden"]["w"] + meta_params["hidden"]["b"])
            output = hidden @ meta_params["output"]["w"] + meta_params["output"]["b"]
            return jnp.exp(meta_params["log_step_size"]) * output

        def update_fn(grads, state, params=None, loss=None, **extra_args):
            del extra_args
            if params is None or loss is None:
                raise ValueError("the li_malik_policy learned optimizer needs params and the loss: "
                                 "call update(grads, state, params, loss=loss)")
            started = state.iteration > 0
            params32 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
            loss32 = jnp.asarray(loss, jnp.float32)
            location_changes = jax.tree.map(
                lambda h, p, q: _push(h, jnp.where(started, p - q, 0.0)),
                state.location_changes, params32, state.previous_params)
            gradients = jax.tree.map(lambda h, g: _push(h, jnp.asarray(g, jnp.float32)), state.gradients, grads)
            objective_changes = _push(state.objective_changes, jnp.where(started, loss32 - state.previous_loss, 0.0))
            steps = jax.tree.map(lambda dx, g: step(dx, g, objective_changes), location_changes, gradients)
            updates = jax.tree.map(lambda s, g: s.astype(jnp.result_type(g)), steps, grads)
            new_state = LiMalikState(location_changes, gradients, objective_changes, params32, loss32,
                                     state.iteration + 1)
            return updates, new_state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
