"""feature_lopt: a per-parameter MLP, like small_fc_lopt, over a configurable list of named input features."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, NamedTuple, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from lopt import feature_sets
from lopt import features as feature_lib
from lopt import small_fc_lopt
from lopt import tensor_map
from lopt.base import LearnedOptimizer, LearnedOptimizerError, MetaParams, NumSteps, register

Array = jax.Array

# small_fc_lopt's inputs: with these features and equal meta-params, feature_lopt computes small_fc_lopt's updates.
DEFAULT_FEATURES = ("gradient", "parameter", "momenta", "time")


class FeatureLOptState(NamedTuple):
    """Optimizer state: each feature's state under its name (per-parameter ones: a tuple over tensors, in
    tree order) and the step count."""

    features: Dict[str, Any]
    iteration: Array


@register("feature_lopt")
@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureLOpt(LearnedOptimizer):
    """A per-parameter MLP whose inputs are the named `features` (lopt.feature_sets), outputting direction and magnitude.

    The input width is the sum of the features' widths; the optimizer state holds each feature's
    accumulators. Inputs are laid out in list order. Per-parameter features are normalised per
    tensor as each declares; global features (time, fraction, loss_progress, domain) are the same
    for every parameter and enter through the first layer's bias. The update is
    `-direction * exp(magnitude * exp_mult) * step_mult`, as small_fc_lopt's; with the default
    features ("gradient", "parameter", "momenta", "time") and the same meta-params it computes
    small_fc_lopt's updates.

    Features reading extra `update()` arguments list them in `extra_update_args`:
    `hessian_diag` (Hutchinson's z * (H z), computed by lopt.update_arguments; the feature reads 0
    when a loop passes none) and `domain_features` (a `[domain_width]` vector from the task, e.g.
    tasks.finance's asset class and volatility; zeros when a loop passes none). So the optimizer
    drops into any optax loop; features a loop cannot supply read their documented defaults.

    Settings used by some features: `momentum_decays` (momenta), `time_scales` (time),
    `variance_window` (variance: EMA decay 1 - 2 / (window + 1)), `curvature_decay` (the EMA over
    steps of hessian_diag and secant), `secant_delta` (secant: the step floor relative to the
    tensor's RMS step), `domain_width` (domain).

    All parameters are packed into one channel-major `[inputs, num_params]` array and the MLP runs
    `block_size` columns at a time; unlike small_fc_lopt, the normalised features of the whole
    model are written out once per step (a research optimizer, not the fast path).
    """

    features: Tuple[str, ...] = DEFAULT_FEATURES
    hidden_sizes: Tuple[int, ...] = (32, 32)
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    momentum_decays: Tuple[float, ...] = feature_lib.MOMENTUM_DECAYS
    time_scales: Tuple[float, ...] = feature_lib.TIME_SCALES
    variance_window: int = 10
    curvature_decay: float = 0.9
    secant_delta: float = 0.1
    domain_width: int = 0
    block_size: int = 32768

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks the feature list and ranges."""
        super().__post_init__()
        feature_sets.check_feature_list(self.features)
        if not all(h >= 1 for h in self.hidden_sizes):
            raise LearnedOptimizerError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if not (self.step_mult > 0 and self.exp_mult >= 0 and self.block_size >= 1):
            raise LearnedOptimizerError(
                f"need step_mult > 0, exp_mult >= 0 and block_size >= 1; got {self.step_mult}, {self.exp_mult}, "
                f"{self.block_size}")
        if not all(0.0 <= d < 1.0 for d in self.momentum_decays):
            raise LearnedOptimizerError(f"momentum_decays must lie in [0, 1), got {self.momentum_decays}")
        if self.variance_window < 1 or not 0.0 <= self.curvature_decay < 1.0 or self.secant_delta <= 0:
            raise LearnedOptimizerError(
                "need variance_window >= 1, 0 <= curvature_decay < 1 and secant_delta > 0; got "
                f"{self.variance_window}, {self.curvature_decay}, {self.secant_delta}")
        if ("domain" in self.features) != (self.domain_width > 0) or self.domain_width < 0:
            raise LearnedOptimizerError(
                "the domain feature needs domain_width >= 1 (the task's domain vector size), and domain_width "
                f"is only used by it; got features {self.features} and domain_width {self.domain_width}")
        for feature in self.selected_features:
            if feature.width(self) < 1:
                raise LearnedOptimizerError(f"feature {feature.name!r} has no inputs with these settings")

    @property
    def selected_features(self) -> Tuple[feature_sets.Feature, ...]:
        """The Feature objects named in `features`, in order."""
        return tuple(feature_sets.get_feature(name) for name in self.features)

    @property
    def feature_widths(self) -> Dict[str, int]:
        """Each selected feature's number of inputs, in order."""
        return {f.name: f.width(self) for f in self.selected_features}

    @property
    def num_inputs(self) -> int:
        """The MLP's input width: the sum of the selected features' widths."""
        return sum(self.feature_widths.values())

    @property
    def state_values_per_parameter(self) -> int:
        """Float32 values of feature state kept per parameter (the step count and global states aside)."""
        return sum(f.state_size(self) for f in self.selected_features)

    @property
    def extra_update_args(self) -> Tuple[str, ...]:
        """The `update()` keyword arguments beyond the gradients the selected features read."""
        return tuple(dict.fromkeys(name for f in self.selected_features for name in f.reads))

    def init(self, key: Array) -> MetaParams:
        """Returns the MLP weights: num_inputs -> hidden_sizes -> 2."""
        return small_fc_lopt.init_mlp(key, (self.num_inputs, *self.hidden_sizes, 2))

    def update_feature_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Returns {"mlp": (num_inputs,)}: one parameter's MLP inputs, in list order (global features included)."""
        return {"mlp": (self.num_inputs,)}

    def update_from_features(self, meta_params: MetaParams, features: Dict[str, Array]) -> Dict[str, Array]:
        """Returns {"mlp": [n]}: the MLP's `direction * exp(magnitude * exp_mult)` (the step before `step_mult`,
        negated by `transformation`) for each row of `features["mlp"]`, `[n, num_inputs]`."""
        inputs = features["mlp"]
        chex.assert_shape(inputs, (None, self.num_inputs))
        first_layer = meta_params["w0"].T @ inputs.T + meta_params["b0"][:, None]
        return {"mlp": small_fc_lopt.column_mlp_steps(meta_params, first_layer, len(self.hidden_sizes) + 1, 1.0,
                                                      self.exp_mult)}

    def _input_rows(self) -> Tuple[List[int], List[int]]:
        """Returns the first-layer input indices of the per-parameter features and of the global ones."""
        parameter_rows, global_rows, offset = [], [], 0
        for feature in self.selected_features:
            width = feature.width(self)
            (parameter_rows if feature.kind == "parameter" else global_rows).extend(range(offset, offset + width))
            offset += width
        return parameter_rows, global_rows

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax transformation that applies the MLP with weights `meta_params` to the features."""
        selected = self.selected_features
        parameter_features = [f for f in selected if f.kind == "parameter"]
        global_features = [f for f in selected if f.kind == "global"]
        parameter_rows, global_rows = self._input_rows()
        num_layers = len(self.hidden_sizes) + 1
        step_mult, exp_mult, block_size = self.step_mult, self.exp_mult, self.block_size
        settings = self

        def init_fn(params):
            flat = [jnp.ravel(p).astype(jnp.float32) for p in jax.tree.leaves(params)]
            states = {f.name: tuple(f.init(settings, p) for p in flat) for f in parameter_features}
            states.update({f.name: f.init(settings) for f in global_features})
            return FeatureLOptState(features=states, iteration=jnp.zeros((), jnp.int32))

        def update_fn(grads, state, params=None, *, loss=None, hessian_diag=None, domain_features=None,
                      **extra_args):
            del extra_args
            if params is None:
                raise ValueError("feature_lopt needs params: call update(grads, state, params)")
            chex.assert_trees_all_equal_shapes(grads, params)
            param_leaves, treedef = jax.tree.flatten(params)
            grad_leaves = [jnp.ravel(g).astype(jnp.float32) for g in jax.tree.leaves(grads)]
            flat_params = [jnp.ravel(p).astype(jnp.float32) for p in param_leaves]
            if hessian_diag is not None:
                chex.assert_trees_all_equal_shapes(hessian_diag, grads)
                hessian_leaves = [jnp.ravel(h).astype(jnp.float32) for h in jax.tree.leaves(hessian_diag)]
            else:
                hessian_leaves = [None] * len(grad_leaves)
            for f in parameter_features:
                if len(state.features[f.name]) != len(param_leaves):
                    raise ValueError(f"optimizer state holds {f.name} for {len(state.features[f.name])} tensors, "
                                     f"params have {len(param_leaves)}")

            new_states: Dict[str, Any] = {}
            global_inputs = feature_sets.GlobalInputs(state.iteration, num_steps, loss, domain_features)
            global_values = []
            for f in global_features:
                value, new_states[f.name] = f.update(settings, global_inputs, state.features[f.name])
                chex.assert_shape(value, (f.width(settings),))
                global_values.append(value)

            per_tensor_rows = [[] for _ in param_leaves]
            for f in parameter_features:
                leaf_states = []
                for i, (g, p, h) in enumerate(zip(grad_leaves, flat_params, hessian_leaves)):
                    rows, leaf_state = f.update(settings, feature_sets.ParameterInputs(g, p, h, state.iteration),
                                                state.features[f.name][i])
                    chex.assert_shape(rows, (f.width(settings), g.shape[0]))
                    per_tensor_rows[i].append(feature_sets.normalize_rows(rows, f.normalization))
                    leaf_states.append(leaf_state)
                new_states[f.name] = tuple(leaf_states)

            w0 = meta_params["w0"]
            first_weight = w0[jnp.asarray(parameter_rows)].T
            first_bias = meta_params["b0"]
            if global_rows:
                first_bias = jnp.concatenate(global_values) @ w0[jnp.asarray(global_rows)] + first_bias

            def column_steps(columns: Array) -> Array:
                return small_fc_lopt.column_mlp_steps(meta_params, first_weight @ columns + first_bias[:, None],
                                                      num_layers, step_mult, exp_mult)

            inputs = [jnp.concatenate(rows, axis=0) for rows in per_tensor_rows]
            total = sum(x.shape[1] for x in inputs)
            columns = small_fc_lopt.pack_columns(inputs, total)
            steps = tensor_map.map_blocks(column_steps, columns, block_size, axis=1)
            updates, offset = [], 0
            for p, x in zip(param_leaves, inputs):
                updates.append((-steps[offset:offset + x.shape[1]]).reshape(p.shape).astype(p.dtype))
                offset += x.shape[1]
            new_state = FeatureLOptState(features=new_states, iteration=state.iteration + 1)
            return jax.tree.unflatten(treedef, updates), new_state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
