"""Meta-regularisation: penalties on the learned optimizer's meta-parameters, added to the meta-loss.

    L_total = L_meta + l2_weight * Omega_l2 + smoothness_weight * Omega_smooth

Omega_l2 = 0.5 * ||Phi - Phi_0||^2, the squared distance of the meta-params from those the run
started from (`l2_from_init=True`), or 0.5 * ||Phi||^2 (`l2_from_init=False`).

Omega_smooth is how sharply the update rule reacts to its inputs: the mean over random feature
points f ~ N(0, I) and directions d ~ N(0, I) of ((u(f + s d) - u(f)) / s)^2, where u is the
rule's step before its fixed step scale (`LearnedOptimizer.update_from_features`) and s is
`smoothness_scale`; as s -> 0 it is the squared Frobenius norm of the rule's Jacobian with
respect to its features, per output. The features the optimizers read are normalised to unit
second moment, so N(0, I) is of the scale they see. A rule with several networks (conv_lopt's
convolution head and fallback MLP) averages the penalty of each.

The trainer adds the regulariser's gradient to every estimator's meta-gradient after the
estimate (`Trainer(regularizer=...)`) and logs the values; config:
`config.meta_train.regularizer`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp

from lopt.base import LearnedOptimizer

Array = jax.Array

# The regulariser draws its random features from the estimator's key folded with this constant, so the
# estimator's own draws are the same with and without it.
KEY_STREAM = 0x5E6


def l2_penalty(meta_params: Any, anchor: Any = None) -> Array:
    """Returns 0.5 * the sum of squares of `meta_params - anchor` over all leaves (of `meta_params` when anchor is None)."""
    anchor = jax.tree.map(jnp.zeros_like, meta_params) if anchor is None else anchor
    squares = jax.tree.map(lambda p, a: jnp.sum(jnp.square(p - a)), meta_params, anchor)
    return 0.5 * sum(jax.tree.leaves(squares), jnp.zeros((), jnp.float32))


def smoothness_penalty(optimizer: LearnedOptimizer, meta_params: Any, key: Array, scale: float = 0.1,
                       num_samples: int = 64) -> Array:
    """Returns the mean squared finite-difference sensitivity of `optimizer`'s update rule to its input features.

    At `num_samples` points f ~ N(0, I) per network of the rule (`update_feature_shapes`), each
    along its own direction d ~ N(0, I): mean of ((u(f + scale d) - u(f)) / scale)^2 over samples
    and outputs, then over networks. Deterministic given `key`, differentiable in `meta_params`;
    the features have the meta-params' dtype.
    """
    shapes = optimizer.update_feature_shapes()
    names = sorted(shapes)
    keys = jax.random.split(key, 2 * len(names))
    dtype = jnp.result_type(*jax.tree.leaves(meta_params))
    points = {name: jax.random.normal(keys[2 * i], (num_samples, *shapes[name]), dtype)
              for i, name in enumerate(names)}
    moved = {name: points[name] + scale * jax.random.normal(keys[2 * i + 1], points[name].shape, dtype)
             for i, name in enumerate(names)}
    before = optimizer.update_from_features(meta_params, points)
    after = optimizer.update_from_features(meta_params, moved)
    per_network = [jnp.mean(jnp.square((after[name] - before[name]) / scale)) for name in names]
    return sum(per_network) / len(per_network)


@dataclasses.dataclass(frozen=True)
class MetaRegularizer:
    """The weights and settings of the meta-regularisation penalties (module docstring); all weights 0 is off.

    `l2_weight`: lambda of Omega_l2; `l2_from_init`: measure it from the run's initial
    meta-params (else from zero); `smoothness_weight`: lambda of Omega_smooth;
    `smoothness_scale`: the finite-difference step s, in feature units; `smoothness_samples`:
    random feature points per network per meta-step.
    """

    l2_weight: float = 0.0
    l2_from_init: bool = True
    smoothness_weight: float = 0.0
    smoothness_scale: float = 0.1
    smoothness_samples: int = 64

    def __post_init__(self) -> None:
        """Checks every setting, raising a one-line ValueError naming the bad one."""
        for name in ("l2_weight", "smoothness_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.l2_from_init, bool):
            raise ValueError(f"l2_from_init must be True or False, got {self.l2_from_init!r}")
        scale = self.smoothness_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"smoothness_scale must be a finite number > 0, got {scale!r}")
        samples = self.smoothness_samples
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"smoothness_samples must be an integer >= 1, got {samples!r}")

    @property
    def enabled(self) -> bool:
        """Whether any penalty has a positive weight (when none has, the trainer computes nothing)."""
        return self.l2_weight > 0 or self.smoothness_weight > 0

    @property
    def needs_anchor(self) -> bool:
        """Whether the trainer keeps the run's initial meta-params for Omega_l2."""
        return self.l2_weight > 0 and self.l2_from_init

    def check_optimizer(self, optimizer: LearnedOptimizer) -> None:
        """Raises a one-line error when a positive smoothness weight meets an optimizer that does not expose
        `update_from_features`."""
        if self.smoothness_weight > 0:
            optimizer.update_feature_shapes()

    def penalties(self, optimizer: LearnedOptimizer, meta_params: Any, anchor: Any, key: Array) -> Dict[str, Array]:
        """Returns the unweighted value of each penalty with a positive weight: {"l2": ..., "smoothness": ...}.

        `anchor` is the run's initial meta-params (`needs_anchor`), else ignored.
        """
        values = {}
        if self.l2_weight > 0:
            values["l2"] = l2_penalty(meta_params, anchor if self.l2_from_init else None)
        if self.smoothness_weight > 0:
            values["smoothness"] = smoothness_penalty(optimizer, meta_params, key, float(self.smoothness_scale),
                                                      int(self.smoothness_samples))
        return values

    def weighted(self, values: Dict[str, Array]) -> Array:
        """Returns the sum of `penalties`' values times their weights: the amount added to the meta-loss."""
        weights = {"l2": self.l2_weight, "smoothness": self.smoothness_weight}
        return sum((float(weights[name]) * value for name, value in values.items()), jnp.zeros((), jnp.float32))

    def value_and_grad(self, optimizer: LearnedOptimizer, meta_params: Any, anchor: Any,
                       key: Array) -> Tuple[Array, Any, Dict[str, Array]]:
        """Returns (weighted total, its gradient with respect to `meta_params`, metrics).

        Metrics: `regularizer` (the weighted total) and `regularizer_<name>` (each unweighted penalty).
        """
        def total(params):
            values = self.penalties(optimizer, params, anchor, key)
            return self.weighted(values), values

        (value, values), gradient = jax.value_and_grad(total, has_aux=True)(meta_params)
        metrics = {"regularizer": value, **{f"regularizer_{name}": v for name, v in values.items()}}
        return value, gradient, metrics

