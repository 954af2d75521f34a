"""Adam with learned hyperparameters: global scalars (`learned_adam`) or per-tensor predicted multipliers (`adam_multiplier`).

Hyperparameters are meta-parameters in unconstrained form: log learning rate, beta logits
(beta = sigmoid(logit)) and log eps. Bias correction uses the running product of the betas
actually applied, so betas may change from step to step and from tensor to tensor.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from lopt import schedule_features as sched
from lopt.adafac_mlp import require_params
from lopt.base import LearnedOptimizer, MetaParams, NumSteps, register
from lopt.small_fc_lopt import apply_mlp_hidden, init_mlp
from lopt.normalization import clip_magnitude
from lopt.tensor_map import map_tensors
from lopt.tensor_statistics import num_statistics, tensor_statistics

Array = jax.Array

SQRT_FLOOR = 1e-30
MAX_LOG_MULTIPLIER = 10.0
MAX_BETA_LOGIT = 16.0
BIAS_CORRECTION_FLOOR = 1e-10


class TensorAdamState(NamedTuple):
    """Adam moments of one tensor (float32) and the products of the betas applied to it so far."""

    mu: Array
    nu: Array
    b1_power: Array
    b2_power: Array


class LearnedAdamState(NamedTuple):
    """Per-tensor Adam states and the step count."""

    tensors: Any
    iteration: Array


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def hyperparameter_init(learning_rate: float, b1: float, b2: float, eps: float) -> MetaParams:
    """Returns Adam's hyperparameters in unconstrained form as float32 scalars."""
    as32 = lambda x: jnp.asarray(x, jnp.float32)
    return {
        "log_learning_rate": as32(math.log(learning_rate)),
        "b1_logit": as32(_logit(b1)),
        "b2_logit": as32(_logit(b2)),
        "log_eps": as32(math.log(eps)),
    }


def init_tensor_state(p: Array) -> TensorAdamState:
    """Returns zero moments and unit beta products for a tensor shaped like `p`."""
    zeros = jnp.zeros(p.shape, jnp.float32)
    one = jnp.ones((), jnp.float32)
    return TensorAdamState(zeros, zeros, one, one)


def adam_tensor_step(
    g: Array, state: TensorAdamState, log_lr: Array, b1_logit: Array, b2_logit: Array, log_eps: Array
):
    """Returns (update of g's dtype, new state) for one tensor: -lr * m_hat / (sqrt(v_hat) + eps), g clipped to +-1e18."""
    g32 = clip_magnitude(g.astype(jnp.float32))
    b1, b2 = jax.nn.sigmoid(b1_logit), jax.nn.sigmoid(b2_logit)
    mu = b1 * state.mu + jax.nn.sigmoid(-b1_logit) * g32
    nu = b2 * state.nu + jax.nn.sigmoid(-b2_logit) * jnp.square(g32)
    b1_power, b2_power = state.b1_power * b1, state.b2_power * b2
    m_hat = mu / jnp.maximum(1.0 - b1_power, BIAS_CORRECTION_FLOOR)
    v_hat = nu / jnp.maximum(1.0 - b2_power, BIAS_CORRECTION_FLOOR)
    step = jnp.exp(log_lr) * m_hat / (jnp.sqrt(v_hat + SQRT_FLOOR) + jnp.exp(log_eps))
    return (-step).astype(g.dtype), TensorAdamState(mu, nu, b1_power, b2_power)


def _init_state(params: Any) -> LearnedAdamState:
    return LearnedAdamState(jax.tree.map(init_tensor_state, params), jnp.zeros((), jnp.int32))


@register("learned_adam")
@dataclasses.dataclass(frozen=True, kw_only=True)
class LearnedAdam(LearnedOptimizer):
    """Adam whose log learning rate, beta logits and log eps are meta-parameters (four scalars)."""

    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks their ranges."""
        super().__post_init__()
        learning_rate, b1, b2, eps = self.learning_rate, self.b1, self.b2, self.eps
        if not (learning_rate > 0 and 0 < b1 < 1 and 0 < b2 < 1 and eps > 0):
            raise ValueError(f"learned_adam needs lr > 0, 0 < b1, b2 < 1, eps > 0; got {learning_rate}, {b1}, {b2}, {eps}")

    def init(self, key: Array) -> MetaParams:
        """Returns the four hyperparameters at their constructor values."""
        del key
        return hyperparameter_init(self.learning_rate, self.b1, self.b2, self.eps)

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns Adam at the hyperparameters in `meta_params`."""
        del num_steps
        hyper = (meta_params["log_learning_rate"], meta_params["b1_logit"], meta_params["b2_logit"], meta_params["log_eps"])

        def update_fn(grads, state, params=None, **extra_args):
            del params, extra_args
            updates, tensors = map_tensors(lambda g, s: adam_tensor_step(g, s, *hyper), grads, state.tensors)
            return updates, LearnedAdamState(tensors, state.iteration + 1)

        return optax.GradientTransformationExtraArgs(_init_state, update_fn)


@register("adam_multiplier")
@dataclasses.dataclass(frozen=True, kw_only=True)
class AdamMultiplier(LearnedOptimizer):
    """Adam whose lr and beta logits are adjusted per tensor and step by an MLP over tensor statistics and training fraction.

    The MLP outputs (a, b, c): lr <- lr * exp(a), beta1 logit += b, beta2 logit += c. Its last
    layer starts at zero, so initial meta-params give plain Adam at the base hyperparameters,
    which are meta-parameters too. num_steps None means 10k steps for the training fraction.
    """

    hidden_sizes: Tuple[int, ...] = (16,)
    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    @property
    def num_inputs(self) -> int:
        """Tensor statistics (gradient, parameter, first moment) plus training-fraction features."""
        return num_statistics(1) + sched.NUM_FRACTION_FEATURES

    def init(self, key: Array) -> MetaParams:
        """Returns base hyperparameters and the multiplier MLP with a zero last layer."""
        net = init_mlp(key, (self.num_inputs, *self.hidden_sizes, 3))
        last = len(self.hidden_sizes)
        net[f"w{last}"] = jnp.zeros_like(net[f"w{last}"])
        return {"adam": hyperparameter_init(self.learning_rate, self.b1, self.b2, self.eps), "net": net}

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns Adam with per-tensor hyperparameters predicted from `meta_params`."""
        base, net = meta_params["adam"], meta_params["net"]
        num_layers = len(self.hidden_sizes) + 1

        def update_fn(grads, state, params=None, **extra_args):
            del extra_args
            require_params(params, "adam_multiplier")
            chex.assert_trees_all_equal_shapes(grads, params)
            time = sched.fraction_features(sched.training_fraction(state.iteration, num_steps))

            def tensor_update(g, p, s: TensorAdamState):
                inputs = jnp.concatenate([tensor_statistics(g, p, s.mu[None]), time])
                out = apply_mlp_hidden(net, inputs @ net["w0"] + net["b0"], num_layers)
                log_lr = base["log_learning_rate"] + jnp.clip(out[0], -MAX_LOG_MULTIPLIER, MAX_LOG_MULTIPLIER)
                b1_logit = jnp.clip(base["b1_logit"] + out[1], -MAX_BETA_LOGIT, MAX_BETA_LOGIT)
                b2_logit = jnp.clip(base["b2_logit"] + out[2], -MAX_BETA_LOGIT, MAX_BETA_LOGIT)
                return adam_tensor_step(g, s, log_lr, b1_logit, b2_logit, base["log_eps"])

            updates, tensors = map_tensors(tensor_update, grads, params, state.tensors)
            return updates, LearnedAdamState(tensors, state.iteration + 1)

        return optax.GradientTransformationExtraArgs(_init_state, update_fn)
