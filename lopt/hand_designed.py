"""Hand-designed baselines behind the learned-optimizer contract.

Adam, AdamW, SGD, SGD with momentum, RMSprop, Adam and AdamW under a warm-up and cosine
schedule, and optax.contrib's Muon and schedule-free AdamW. Their only meta-parameter is the
log learning rate, so a learning-rate grid search and meta-learning that one scalar use the
same code path as any learned optimizer.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from lopt.base import LearnedOptimizer, MetaParams, NumSteps, register

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class HandDesigned(LearnedOptimizer):
    """A fixed optax optimizer whose learning rate is `exp(meta_params['log_learning_rate'])`."""

    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks the learning rate."""
        super().__post_init__()
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")

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

    def evaluation_params(self, opt_state: optax.OptState, params: optax.Params) -> optax.Params:
        """Returns the parameters a loss should be measured at: `params` itself, except for averaging optimizers."""
        del opt_state
        return params

    def transformation(
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
@dataclasses.dataclass(frozen=True, kw_only=True)
class Adam(HandDesigned):
    """Adam (Kingma and Ba) with optax defaults for betas and eps."""

    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def base_transformation(self, learning_rate: Array) -> optax.GradientTransformation:
        """Returns optax.adam."""
        return optax.adam(learning_rate, b1=self.b1, b2=self.b2, eps=self.eps)


@register("adamw")
@dataclasses.dataclass(frozen=True, kw_only=True)
class AdamW(HandDesigned):
    """AdamW: Adam with decoupled weight decay."""

    weight_decay: float = 1e-4

    def base_transformation(self, learning_rate: Array) -> optax.GradientTransformation:
        """Returns optax.adamw."""
        return optax.adamw(learning_rate, weight_decay=self.weight_decay)


@register("sgd")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SGD(HandDesigned):
    """Plain stochastic gradient descent."""

    def base_transformation(self, learning_rate: Array) -> optax.GradientTransformation:
        """Returns optax.sgd."""
        return optax.sgd(learning_rate)


@register("sgd_momentum")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SGDMomentum(HandDesigned):
    """SGD with heavy-ball (or Nesterov) momentum."""

    learning_rate: float = 1e-2
    momentum: float = 0.9
    nesterov: bool = False

    def base_transformation(self, learning_rate: Array) -> optax.GradientTransformation:
        """Returns optax.sgd with momentum."""
        return optax.sgd(learning_rate, momentum=self.momentum, nesterov=self.nesterov)


@register("rmsprop")
@dataclasses.dataclass(frozen=True, kw_only=True)
class RMSProp(HandDesigned):
    """RMSprop with optax defaults."""

    decay: float = 0.9
    eps: float = 1e-8

    def base_transformation(self, learning_rate: Array) -> optax.GradientTransformation:
        """Returns optax.rmsprop."""
        return optax.rmsprop(learning_rate, decay=self.decay, eps=self.eps)


def warmup_cosine_multiplier(count: Array, num_steps: NumSteps, warmup_fraction: float, final_fraction: float) -> Array:
    """Returns the learning-rate multiplier at step `count`: a linear rise over the first `warmup_fraction` of
    `num_steps`, then a cosine decay to `final_fraction` at `num_steps`."""
    total = jnp.maximum(jnp.asarray(num_steps, jnp.float32), 1.0)
    warmup = warmup_fraction * total
    t = jnp.asarray(count, jnp.float32)
    ramp = jnp.where(warmup > 0, jnp.minimum((t + 1.0) / jnp.maximum(warmup, 1.0), 1.0), 1.0)
    progress = jnp.clip((t - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    return ramp * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress)))


def _check_fractions(warmup_fraction: float, final_fraction: float) -> None:
    if not (0.0 <= warmup_fraction < 1.0 and 0.0 <= final_fraction <= 1.0):
        raise ValueError(
            f"need 0 <= warmup_fraction < 1 and 0 <= final_fraction <= 1; got {warmup_fraction}, {final_fraction}")


@register("adam_cosine")
@dataclasses.dataclass(frozen=True, kw_only=True)
class AdamCosine(Adam):
    """Adam under a linear-warmup, cosine-decay schedule spanning the run's `num_steps`.

    The learning rate rises from 0 over the first `warmup_fraction` of the run and decays to
    `final_fraction` times its peak at `num_steps`: the usual stronger hand-designed reference
    for a fixed step budget. The optimizer needs `num_steps`.
    """

    warmup_fraction: float = 0.05
    final_fraction: float = 0.01

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks the learning rate and schedule fractions."""
        super().__post_init__()
        _check_fractions(self.warmup_fraction, self.final_fraction)

    def direction(self) -> optax.GradientTransformation:
        """Returns the unscheduled update direction: Adam's scaling."""
        return optax.scale_by_adam(b1=self.b1, b2=self.b2, eps=self.eps)

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the direction whose step size follows the warmup-cosine schedule over `num_steps` steps."""
        if num_steps is None:
            raise ValueError(f"{self.name} needs the run length: call transformation(meta_params, num_steps=N)")
        learning_rate = jnp.exp(meta_params["log_learning_rate"])

        def step_size(count: Array) -> Array:
            multiplier = warmup_cosine_multiplier(count, num_steps, self.warmup_fraction, self.final_fraction)
            return -learning_rate * multiplier

        scheduled = optax.chain(self.direction(), optax.scale_by_schedule(step_size))
        return keep_gradient_dtype(optax.with_extra_args_support(scheduled))


@register("adamw_cosine")
@dataclasses.dataclass(frozen=True, kw_only=True)
class AdamWCosine(AdamCosine):
    """AdamW (decoupled weight decay, scaled by the scheduled learning rate as in optax.adamw) under AdamCosine's
    linear warm-up and cosine decay over the run's `num_steps`."""

    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks them, the weight decay included."""
        super().__post_init__()
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")

    def direction(self) -> optax.GradientTransformation:
        """Returns Adam's scaling followed by the decoupled weight decay."""
        return optax.chain(super().direction(), optax.add_decayed_weights(self.weight_decay))


@register("muon")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Muon(HandDesigned):
    """optax.contrib.muon: Newton-Schulz-orthogonalised Nesterov momentum for 2-D weight matrices and AdamW for every
    other parameter, both at one learning rate.

    optax's default routing is kept: every 2-D array (output layers and embeddings included)
    takes the Muon branch, and higher-rank arrays (convolution kernels) the AdamW one.
    """

    learning_rate: float = 0.02
    beta: float = 0.95
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks their ranges."""
        super().__post_init__()
        if not (0.0 <= self.beta < 1.0 and self.weight_decay >= 0):
            raise ValueError(f"muon needs 0 <= beta < 1 and weight_decay >= 0, got {self.beta}, {self.weight_decay}")

    def base_transformation(self, learning_rate: Array) -> optax.GradientTransformation:
        """Returns optax.contrib.muon."""
        return optax.contrib.muon(learning_rate, beta=self.beta, weight_decay=self.weight_decay)


@register("schedule_free_adamw")
@dataclasses.dataclass(frozen=True, kw_only=True)
class ScheduleFreeAdamW(HandDesigned):
    """optax.contrib.schedule_free_adamw (Defazio et al. 2024) with a linear warm-up over `warmup_fraction` of the run.

    Gradients are taken at the interpolated point the optimizer keeps as its parameters; losses
    are meant to be measured at the averaged point, `evaluation_params(opt_state, params)`.
    """

    learning_rate: float = 2.5e-3
    warmup_fraction: float = 0.05
    b1: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks their ranges."""
        super().__post_init__()
        if not (0.0 <= self.warmup_fraction < 1.0 and 0.0 < self.b1 < 1.0 and self.weight_decay >= 0):
            raise ValueError("schedule_free_adamw needs 0 <= warmup_fraction < 1, 0 < b1 < 1 and weight_decay >= 0; "
                             f"got {self.warmup_fraction}, {self.b1}, {self.weight_decay}")

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns schedule-free AdamW; warm-up needs a concrete `num_steps` (none without it)."""
        warmup_steps = None
        if num_steps is not None and self.warmup_fraction > 0:
            if isinstance(num_steps, jax.core.Tracer):
                raise ValueError(
                    "schedule_free_adamw needs a concrete num_steps for its warm-up (or warmup_fraction=0)")
            warmup_steps = max(1, round(self.warmup_fraction * int(num_steps)))
        learning_rate = jnp.exp(meta_params["log_learning_rate"])
        schedule_free = optax.contrib.schedule_free_adamw(
            learning_rate, warmup_steps=warmup_steps, b1=self.b1, weight_decay=self.weight_decay)
        return keep_gradient_dtype(schedule_free)

    def evaluation_params(self, opt_state: optax.OptState, params: optax.Params) -> optax.Params:
        """Returns the averaged iterate x, where schedule-free's losses are measured (schedule_free_eval_params)."""
        return optax.contrib.schedule_free_eval_params(opt_state, params)
