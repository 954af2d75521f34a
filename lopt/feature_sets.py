"""Named input features of learned optimizers, each a composable piece: its width, its state and its update.

A feature is either per-parameter (`kind="parameter"`: one or more rows `[width, size]` for every
tensor, computed from that tensor's gradient, parameter and the feature's own per-tensor state) or
global (`kind="global"`: one vector `[width]` shared by every parameter, e.g. time features,
which a per-parameter MLP folds into its first layer's bias; that is the same as broadcasting it
to every parameter). An optimizer composing features (lopt.feature_lopt) sums their widths for
its input width and keeps their states side by side in its own.

Features and what they cost per parameter and step (state in float32 values per parameter):

| name | width | state | reads | definition |
|---|---|---|---|---|
| gradient | 1 | 0 | | g |
| parameter | 1 | 0 | | theta |
| momenta | len(momentum_decays) | len(momentum_decays) | | EMAs m_d <- d m_d + (1 - d) g |
| time | len(time_scales) | 0 (global) | | tanh(t / tau - 1) |
| fraction | 6 | 0 (global) | num_steps | schedule_features.fraction_features(t / num_steps) |
| loss_progress | 4 | 0 (5 scalars) | loss= | schedule_features.loss_features |
| direction | 1 | 0 | | g / (norm(g) + eps), norm over the tensor |
| log_abs | 1 | 0 | | log(abs(g) + eps) |
| variance | 1 | 2 | | exponentially weighted variance of g over about `variance_window` steps |
| hessian_diag | 1 | 1 | hessian_diag= | EMA of Hutchinson's z * (H z) (lopt.update_arguments) |
| secant | 1 | 3 | | EMA of the per-coordinate secant curvature dg * dtheta / (dtheta^2 + delta^2) |
| domain | domain_width | 0 (global) | domain_features= | the task's vector (tasks.base.Task.domain_features) |

Windowed variance is an exponentially weighted estimate, not a ring buffer of the last k
gradients: a ring buffer holds k values per parameter (40 bytes at k = 10, five times Adam's
state) and costs O(k) per step to read, while the weighted mean and variance, updated by West's
(1979) recursion, hold 2 values and cost O(1). The decay `1 - 2 / (k + 1)` gives the weights the
same centre of mass as a k-step window. The recursion is started from the first gradient
(mean g_0, variance 0), so no zero initial value biases it.

Hessian diagonal, two ways:
- `hessian_diag`: Hutchinson's estimator z * (H z) with Rademacher z, whose expectation is
  diag(H). The loop computes H z with one forward-over-reverse Hessian-vector product (the same
  pass gives the gradient; about 2-3x the cost of the gradient alone) and passes it as
  `update(..., hessian_diag=...)`; the meta-trainer's unroll and lopt-evaluate do so for any
  optimizer that lists it in `extra_update_args`. One probe is unbiased but noisy (the error
  of coordinate i has variance sum_{j != i} H_ij^2), so the feature is an EMA over steps with
  decay `curvature_decay`. Default for a loop that passes nothing: the EMA is left as it is
  (zeros from init), so the feature reads 0.
- `secant`: computed inside the optimizer from consecutive gradients and parameters, so any
  plain optax loop supplies it: h = dg * dtheta / (dtheta^2 + delta^2), the secant dg / dtheta
  where |dtheta| >> delta and smoothly 0 where the parameter did not move; delta is
  `secant_delta` times the tensor's RMS step, so a coordinate that barely moved cannot produce
  an estimate larger than |dg| / (2 delta). Non-finite estimates are dropped. It costs a few
  elementwise operations and 3 values per parameter (previous gradient, previous parameter and
  the EMA); it reads 0 on the first step.

Normalisation of per-parameter rows, per tensor: `second_moment` is small_fc_lopt's normaliser
(inputs clipped to +-1e18, scaled by rsqrt(1e-5 + mean square)); `scale_free` divides by the RMS
with a negligible epsilon, so a curvature or variance of any magnitude becomes an O(1) input;
`none` feeds the value as defined (direction and log_abs carry their absolute scale on purpose:
after a per-tensor normalisation direction would equal the normalised gradient).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import chex
import jax
import jax.numpy as jnp

from lopt import features as feature_lib
from lopt import normalization
from lopt import schedule_features
from lopt.base import LearnedOptimizerError

Array = jax.Array

NORMALIZATIONS = ("second_moment", "scale_free", "none")
KINDS = ("parameter", "global")
DIRECTION_EPS = 1e-8
LOG_ABS_EPS = 1e-8
SCALE_FREE_EPS = 1e-30


class ParameterInputs(NamedTuple):
    """What a per-parameter feature reads for one tensor, all flattened to `[size]` float32.

    `hessian_diag` is None when the loop passed no Hutchinson estimate; `iteration` is the
    optimizer's step count before this update (0 on the first).
    """

    grad: Array
    param: Array
    hessian_diag: Optional[Array]
    iteration: Array


class GlobalInputs(NamedTuple):
    """What a global feature reads: the step count, the run length, and the loop's optional extra arguments."""

    iteration: Array
    num_steps: Any
    loss: Optional[Array]
    domain_features: Optional[Array]


@dataclasses.dataclass(frozen=True)
class Feature:
    """One named input feature.

    `width(settings)` is its number of input channels and `state_size(settings)` the float32
    values of state it keeps per parameter (0 for a global feature), both given the optimizer's
    settings (its dataclass fields). A per-parameter feature's `init(settings, flat_param)` returns
    one tensor's state and `update(settings, ParameterInputs, state)` returns `(rows [width, size],
    new state)`; a global feature's `init(settings)` returns its state and
    `update(settings, GlobalInputs, state)` returns `(vector [width], new state)`. `reads` names
    the extra `update()` keyword arguments it uses; `normalization` (per-parameter features only)
    is one of NORMALIZATIONS.
    """

    name: str
    kind: str
    width: Callable[[Any], int]
    state_size: Callable[[Any], int]
    init: Callable[..., Any]
    update: Callable[..., Tuple[Array, Any]]
    normalization: str = "none"
    reads: Tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        """Checks the kind and normalisation names."""
        if self.kind not in KINDS:
            raise ValueError(f"feature {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"feature {self.name!r}: normalization must be one of {NORMALIZATIONS}")


_FEATURES: Dict[str, Feature] = {}


def register_feature(feature: Feature) -> Feature:
    """Makes `feature` selectable by its name in a feature list; returns it."""
    if feature.name in _FEATURES and _FEATURES[feature.name] is not feature:
        raise LearnedOptimizerError(f"a feature named {feature.name!r} is already registered")
    _FEATURES[feature.name] = feature
    return feature


def feature_names() -> Tuple[str, ...]:
    """Returns the names of all registered features, in registration order."""
    return tuple(_FEATURES)


def get_feature(name: str) -> Feature:
    """Returns the registered feature `name`; a one-line LearnedOptimizerError naming the choices otherwise."""
    if name not in _FEATURES:
        raise LearnedOptimizerError(f"unknown feature {name!r}; known features: {', '.join(_FEATURES)}")
    return _FEATURES[name]


def check_feature_list(names: Sequence[str]) -> Tuple[Feature, ...]:
    """Returns the features named in `names`, refusing unknown names, repeats and an empty list (one line each)."""
    names = tuple(names)
    if not names:
        raise LearnedOptimizerError("features must name at least one feature; known features: "
                                    + ", ".join(_FEATURES))
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise LearnedOptimizerError(f"features lists {', '.join(repeated)} more than once")
    selected = tuple(get_feature(n) for n in names)
    if not any(f.kind == "parameter" for f in selected):
        raise LearnedOptimizerError("features must include at least one per-parameter feature (e.g. gradient); "
                                    f"got only global ones: {', '.join(names)}")
    return selected


def normalize_rows(rows: Array, how: str) -> Array:
    """Returns one tensor's feature rows `[width, size]` normalised per row over the tensor, as `how` names."""
    if how == "second_moment":
        return normalization.second_moment_normalize(rows, channel_axis=0)
    if how == "scale_free":
        return rows * normalization.second_moment_scales(rows, SCALE_FREE_EPS, channel_axis=0)[:, None]
    return rows


# Definitions, each a function of plain arrays so tests can recompute it with numpy.

def direction(grad: Array, eps: float = DIRECTION_EPS) -> Array:
    """Returns g / (||g|| + eps), the L2 norm taken over the whole tensor."""
    return grad / (jnp.sqrt(jnp.sum(jnp.square(normalization.clip_magnitude(grad)))) + eps)


def log_abs(grad: Array, eps: float = LOG_ABS_EPS) -> Array:
    """Returns log(|g| + eps)."""
    return jnp.log(jnp.abs(grad) + eps)


def variance_decay(window: int) -> float:
    """Returns the EMA decay whose weights have the centre of mass of a `window`-step window: 1 - 2 / (window + 1)."""
    return 1.0 - 2.0 / (window + 1.0)


def update_ew_variance(mean: Array, variance: Array, value: Array, decay: float, first_step: Array) -> Tuple[Array, Array]:
    """Returns the exponentially weighted mean and variance advanced by `value` (West 1979); on the first step
    they restart at (value, 0).

    With weight a = 1 - decay: d = x - mean, mean += a d, variance = (1 - a)(variance + a d^2), which
    equals the weighted variance sum_i w_i (x_i - mean)^2 with w_0 = decay^t and w_i = a decay^(t-i).
    """
    weight = 1.0 - decay
    delta = value - mean
    new_mean = mean + weight * delta
    new_variance = (1.0 - weight) * (variance + weight * jnp.square(delta))
    return (jnp.where(first_step, value, new_mean), jnp.where(first_step, jnp.zeros_like(value), new_variance))


def secant_curvature(grad_change: Array, param_change: Array, relative_delta: float) -> Array:
    """Returns dg * dtheta / (dtheta^2 + delta^2) with delta = relative_delta * RMS(dtheta) over the tensor;
    non-finite results become 0."""
    rms_step = jnp.sqrt(jnp.mean(jnp.square(normalization.clip_magnitude(param_change))))
    delta = relative_delta * rms_step + 1e-30
    estimate = grad_change * param_change / (jnp.square(param_change) + jnp.square(delta))
    return jnp.where(jnp.isfinite(estimate), estimate, 0.0)


def ema_started(ema: Array, value: Array, decay: float, started: Array) -> Array:
    """Returns decay * ema + (1 - decay) * value once `started`, and `value` itself before (no zero bias)."""
    return jnp.where(started, decay * ema + (1.0 - decay) * value, value)


def _no_state(*_: Any) -> Tuple[()]:
    return ()


def _zero(_: Any) -> int:
    return 0


def _one(_: Any) -> int:
    return 1


def _single_row(fn: Callable[[ParameterInputs], Array]) -> Callable[[Any, ParameterInputs, Any], Tuple[Array, Any]]:
    def update(settings: Any, inputs: ParameterInputs, state: Any) -> Tuple[Array, Any]:
        return fn(inputs)[None], state

    return update


def _momenta_update(settings: Any, inputs: ParameterInputs, momenta: Array) -> Tuple[Array, Array]:
    chex.assert_shape(momenta, (len(settings.momentum_decays), inputs.grad.shape[0]))
    decays = jnp.asarray(settings.momentum_decays, jnp.float32)
    momenta = feature_lib.update_emas(momenta, inputs.grad, decays, channel_axis=0)
    return momenta, momenta


def _variance_update(settings: Any, inputs: ParameterInputs, state: Array) -> Tuple[Array, Array]:
    mean, variance = update_ew_variance(state[0], state[1], inputs.grad, variance_decay(settings.variance_window),
                                        inputs.iteration == 0)
    return variance[None], jnp.stack([mean, variance])


def _hessian_update(settings: Any, inputs: ParameterInputs, ema: Array) -> Tuple[Array, Array]:
    if inputs.hessian_diag is None:
        return ema[None], ema
    ema = ema_started(ema, inputs.hessian_diag, settings.curvature_decay, inputs.iteration > 0)
    return ema[None], ema


def _secant_update(settings: Any, inputs: ParameterInputs, state: Array) -> Tuple[Array, Array]:
    previous_grad, previous_param, ema = state[0], state[1], state[2]
    estimate = secant_curvature(inputs.grad - previous_grad, inputs.param - previous_param, settings.secant_delta)
    # step 0 has no previous point (the estimate reads 0); step 1 gives the first estimate, which starts the EMA
    ema = jnp.where(inputs.iteration == 0, 0.0, ema_started(ema, estimate, settings.curvature_decay, inputs.iteration > 1))
    return ema[None], jnp.stack([inputs.grad, inputs.param, ema])


def _time_update(settings: Any, inputs: GlobalInputs, state: Any) -> Tuple[Array, Any]:
    return feature_lib.time_features(inputs.iteration, settings.time_scales), state


def _fraction_update(settings: Any, inputs: GlobalInputs, state: Any) -> Tuple[Array, Any]:
    fraction = schedule_features.training_fraction(inputs.iteration, inputs.num_steps)
    return schedule_features.fraction_features(fraction), state


def _loss_update(settings: Any, inputs: GlobalInputs, state: schedule_features.LossState):
    state = schedule_features.update_loss_state(state, inputs.loss)
    return schedule_features.loss_features(state), state


def _domain_update(settings: Any, inputs: GlobalInputs, state: Any) -> Tuple[Array, Any]:
    width = settings.domain_width
    if inputs.domain_features is None:
        return jnp.zeros((width,), jnp.float32), state
    values = jnp.asarray(inputs.domain_features, jnp.float32)
    if values.shape != (width,):
        raise ValueError(f"domain_features must be a vector of domain_width={width} values, got shape {values.shape}")
    return values, state


def _per_param(name: str, width, state_size, init, update, normalization_name: str, description: str,
               reads: Tuple[str, ...] = ()) -> Feature:
    return register_feature(Feature(name, "parameter", width, state_size, init, update, normalization_name, reads,
                                    description))


def _global(name: str, width, init, update, description: str, reads: Tuple[str, ...] = ()) -> Feature:
    return register_feature(Feature(name, "global", width, _zero, init, update, "none", reads, description))


def _zeros_rows(rows: Callable[[Any], int]) -> Callable[[Any, Array], Array]:
    return lambda settings, param: jnp.zeros((rows(settings), param.shape[0]), jnp.float32)


_per_param("gradient", _one, _zero, _no_state, _single_row(lambda x: x.grad), "second_moment",
           "the gradient g")
_per_param("parameter", _one, _zero, _no_state, _single_row(lambda x: x.param), "second_moment",
           "the parameter value")
_per_param("momenta", lambda s: len(s.momentum_decays), lambda s: len(s.momentum_decays),
           _zeros_rows(lambda s: len(s.momentum_decays)), _momenta_update, "second_moment",
           "gradient EMAs, one per momentum decay")
_global("time", lambda s: len(s.time_scales), _no_state, _time_update, "tanh(t / tau - 1) per time scale")
_global("fraction", lambda s: schedule_features.NUM_FRACTION_FEATURES, _no_state, _fraction_update,
        "how much of the run is done, t / num_steps, and tanh bumps around it")
_global("loss_progress", lambda s: schedule_features.NUM_LOSS_FEATURES,
        lambda s: schedule_features.init_loss_state(), _loss_update,
        "loss EMAs relative to the first loss (0 when the loop passes no loss)", reads=("loss",))
_per_param("direction", _one, _zero, _no_state, _single_row(lambda x: direction(x.grad)), "none",
           "g / (||g|| + 1e-8), the norm over the tensor")
_per_param("log_abs", _one, _zero, _no_state, _single_row(lambda x: log_abs(x.grad)), "none",
           "log(|g| + 1e-8)")
_per_param("variance", _one, lambda s: 2, _zeros_rows(lambda s: 2), _variance_update, "scale_free",
           "exponentially weighted variance of g over about variance_window steps")
_per_param("hessian_diag", _one, _one, lambda s, p: jnp.zeros_like(p, jnp.float32), _hessian_update, "scale_free",
           "EMA of Hutchinson's z * (H z), passed by the loop (0 when it passes none)", reads=("hessian_diag",))
_per_param("secant", _one, lambda s: 3, _zeros_rows(lambda s: 3), _secant_update, "scale_free",
           "EMA of the per-coordinate secant curvature dg * dtheta / (dtheta^2 + delta^2)")
_global("domain", lambda s: s.domain_width, _no_state, _domain_update,
        "the task's domain vector (zeros when the loop passes none)", reads=("domain_features",))
