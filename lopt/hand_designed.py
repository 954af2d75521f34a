"""Hand-designed baselines (Adam, AdamW, SGD, SGD with momentum, RMSprop) behind the learned-optimizer contract.

Their only meta-parameter is the log learning rate, so a learning-rate grid search and
meta-learning that one scalar use the same code path as any learned optimizer.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from lopt.base import LearnedOptimizer, MetaParams, NumSteps, register

Array = jax.Array


class HandDesigned(LearnedOptimizer):
    """A fixed optax optimizer whose learning rate is `exp(meta_params['log_learning_rate'])`."""

    def __init__(self, learning_rate: float = 1e-3):
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        self.learning_rate = float(learning_rate)

    def init(self, key: Array) -> MetaParams:
        """Returns the log learning rate as a float32 scalar."""
        del key
        return {"log_learning_rate": jnp.asarray(math.log(self.learning_rate), jnp.float32)}

    def with_learning_rate(self, meta_params: MetaParams, learning_rate) -> MetaParams:
        """Returns `meta_params` with the learning rate replaced (used by learning-rate grid searches)."""
        del meta_params
        return {"log_learning_rate": jnp.log(jnp.asarray(learning_rate, jnp.float32))}

    def base_transformation(self, learning_rate: Array) -> optax.GradientTransformation:
        """Returns the underlying optax transformation for `learning_rate`."""
        raise NotImplementedError

    def optimizer(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax optimizer at learning rate exp(log_learning_rate)."""
        del num_steps
        learning_rate = jnp.exp(meta_params["log_learning_rate"])
        return keep_gradient_dtype(optax.with_extra_args_support(self.base_transformation(learning_rate)))


def keep_gradient_dtype(
    transformation: optax.GradientTransformationExtraArgs,
) -> optax.GradientTransformationExtraArgs:
    """Wraps `transformation` so its updates have the dtype of the incoming gradients.

    A float32 learning-rate array would otherwise promote bfloat16 updates to float32.
    """

    def update_fn(updates, state, params=None, **extra_args):
        new_updates, state = transformation.update(updates, state, params, **extra_args)
        return jax.tree.map(lambda u, g: u.astype(g.dtype), new_updates, updates), state

    return optax.GradientTransformationExtraArgs(transformation.init, update_fn)


@register("adam")
class Adam(HandDesigned):
    """Adam (Kingma and Ba) with optax defaults for betas and eps."""

    def __init__(self, learning_rate: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        super().__init__(learning_rate)
        self.b1, self.b2, self.eps = float(b1), float(b2), float(eps)

    def base_transformation(self, learning_rate: Array) -> optax.GradientTransformation:
        """Returns optax.adam."""
        return optax.adam(learning_rate, b1=self.b1, b2=self.b2, eps=self.eps)


@register("adamw")
class AdamW(HandDesigned):
    """AdamW: Adam with decoupled weight decay."""

    def __init__(self, learning_rate: float = 1e-3, weight_decay: float = 1e-4):
        super().__init__(learning_rate)
        self.weight_decay = float(weight_decay)

    def base_transformation(self, learning_rate: Array) -> optax.GradientTransformation:
        """Returns optax.adamw."""
        return optax.adamw(learning_rate, weight_decay=self.weight_decay)


@register("sgd")
class SGD(HandDesigned):
    """Plain stochastic gradient descent."""

    def base_transformation(self, learning_rate: Array) -> optax.GradientTransformation:
        """Returns optax.sgd."""
        return optax.sgd(learning_rate)


@register("sgd_momentum")
class SGDMomentum(HandDesigned):
    """SGD with heavy-ball (or Nesterov) momentum."""

    def __init__(self, learning_rate: float = 1e-2, momentum: float = 0.9, nesterov: bool = False):
        super().__init__(learning_rate)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def base_transformation(self, learning_rate: Array) -> optax.GradientTransformation:
        """Returns optax.sgd with momentum."""
        return optax.sgd(learning_rate, momentum=self.momentum, nesterov=self.nesterov)


@register("rmsprop")
class RMSProp(HandDesigned):
    """RMSprop with optax defaults."""

    def __init__(self, learning_rate: float = 1e-3, decay: float = 0.9, eps: float = 1e-8):
        super().__init__(learning_rate)
        self.decay, self.eps = float(decay), float(eps)

    def base_transformation(self, learning_rate: Array) -> optax.GradientTransformation:
        """Returns optax.rmsprop."""
        return optax.rmsprop(learning_rate, decay=self.decay, eps=self.eps)


@register("adam_cosine")
class AdamCosine(Adam):
    """Adam under a linear-warmup, cosine-decay schedule spanning the run's `num_steps`.

    The learning rate rises from 0 over the first `warmup_fraction` of the run and decays to
    `final_fraction` times its peak at `num_steps`: the usual stronger hand-designed reference
    for a fixed step budget. The optimizer needs `num_steps`.
    """

    def __init__(self, learning_rate: float = 1e-3, warmup_fraction: float = 0.05, final_fraction: float = 0.01):
        super().__init__(learning_rate)
        if not (0.0 <= warmup_fraction < 1.0 and 0.0 <= final_fraction <= 1.0):
            raise ValueError(
                f"need 0 <= warmup_fraction < 1 and 0 <= final_fraction <= 1; got {warmup_fraction}, {final_fraction}")
        self.warmup_fraction, self.final_fraction = float(warmup_fraction), float(final_fraction)

    def optimizer(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns Adam whose step size follows the warmup-cosine schedule over `num_steps` steps."""
        if num_steps is None:
            raise ValueError("adam_cosine needs the run length: call optimizer(meta_params, num_steps=N)")
        learning_rate = jnp.exp(meta_params["log_learning_rate"])
        total = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
        warmup = self.warmup_fraction * total
        final_fraction = self.final_fraction

        def step_size(count: Array) -> Array:
            t = jnp.asarray(count, jnp.float32)
            ramp = jnp.where(warmup > 0, jnp.minimum((t + 1.0) / jnp.maximum(warmup, 1.0), 1.0), 1.0)
            progress = jnp.clip((t - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
            decay = final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
            return -learning_rate * ramp * decay

        adam = optax.chain(
            optax.scale_by_adam(b1=self.b1, b2=self.b2, eps=self.eps), optax.scale_by_schedule(step_size))
        return keep_gradient_dtype(optax.with_extra_args_support(adam))
