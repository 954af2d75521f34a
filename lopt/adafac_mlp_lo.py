"""AdafacMLPLOpt exactly as google/learned_optimization computes it, for its published or exported meta-params.

This project's `adafac_mlp` was written from the paper and reads different features (see
`lopt.lo_features`); this variant reproduces the reference step for step, so meta-params
trained there (`lopt.published.import_learned_optimization`) behave here as they did there.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from lopt import features
from lopt import lo_features
from lopt.base import LearnedOptimizer, LearnedOptimizerError, MetaParams, NumSteps, register

Array = jax.Array

FEATURE_GROUPS = ("g", "p", "m", "rms", "m_rsqrt_rms", "rsqrt_rms", "preconditioned_g", "row", "col",
                  "rsqrt_row", "rsqrt_col", "m_preconditioned")


class AdafacMLPLOState(NamedTuple):
    """Accumulators (channel-last, scalars as (1,)) and the step count."""

    accumulators: lo_features.Accumulators
    iteration: Array


def num_param_features(num_momenta: int, num_rms: int, num_factored: int) -> int:
    """Returns the per-parameter input count of the reference feature groups (28 with 3, 1, 3 decays)."""
    return 2 + 2 * num_momenta + 2 * num_rms + 5 * num_factored + num_momenta


def check_decay_counts(momentum: Tuple[float, ...], rms: Tuple[float, ...], factored: Tuple[float, ...]) -> None:
    """Raises LearnedOptimizerError unless there is one rms decay and as many momentum as Adafactor decays."""
    if len(rms) != 1 or len(momentum) != len(factored) or not momentum:
        raise LearnedOptimizerError(
            "the learned_optimization features need exactly one rms decay and as many momentum as Adafactor decays; "
            f"got {len(momentum)} momentum, {len(rms)} rms, {len(factored)} Adafactor decays")


def truncated_normal_mlp(key: Array, sizes: Tuple[int, ...], batch: Tuple[int, ...] = ()) -> MetaParams:
    """Returns {'w{i}', 'b{i}'} of a dense MLP with layer `sizes` (truncated-normal weights of std 1/sqrt(fan-in),
    zero biases), each with leading `batch` axes."""
    params = {}
    for i, (key_i, fan_in, fan_out) in enumerate(zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:])):
        params[f"w{i}"] = jax.random.truncated_normal(key_i, -2.0, 2.0, batch + (fan_in, fan_out)) / jnp.sqrt(fan_in)
        params[f"b{i}"] = jnp.zeros(batch + (fan_out,), jnp.float32)
    return params


@register("adafac_mlp_lo")
@dataclasses.dataclass(frozen=True, kw_only=True)
class AdafacMLPLO(LearnedOptimizer):
    """learned_optimization's AdafacMLPLOpt: a ReLU MLP over 28 Adafactor features and 11 time features.

    Decays are learned as `1 - (1 - default) exp(10 offset)`. `unfactored_momentum_eps` is added
    to the second moment of vectors and scalars before it divides the momenta: 1e-6 at
    learned_optimization's HEAD (32186aa, what the reference trajectory matches); its older
    revisions added nothing (0.0).
    """

    hidden_sizes: Tuple[int, ...] = (4, 4)
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    momentum_decays: Tuple[float, ...] = (0.9, 0.99, 0.999)
    rms_decays: Tuple[float, ...] = (0.999,)
    adafactor_decays: Tuple[float, ...] = (0.9, 0.99, 0.999)
    unfactored_momentum_eps: float = 1e-6

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks the decay counts and widths."""
        super().__post_init__()
        check_decay_counts(self.momentum_decays, self.rms_decays, self.adafactor_decays)
        if not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise LearnedOptimizerError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")

    @property
    def num_inputs(self) -> int:
        """Per-parameter features plus time features (39 by default)."""
        counts = (len(self.momentum_decays), len(self.rms_decays), len(self.adafactor_decays))
        return num_param_features(*counts) + len(features.TIME_SCALES)

    def init(self, key: Array) -> MetaParams:
        """Returns {'mlp': weights num_inputs -> hidden_sizes -> 2, 'decays': zero offsets (the default decays)}."""
        return {
            "mlp": truncated_normal_mlp(key, (self.num_inputs, *self.hidden_sizes, 2)),
            "decays": {
                "momentum": jnp.zeros((len(self.momentum_decays),), jnp.float32),
                "rms": jnp.zeros((len(self.rms_decays),), jnp.float32),
                "adafactor": jnp.zeros((len(self.adafactor_decays),), jnp.float32),
            },
        }

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax transformation that applies the MLP with weights `meta_params`."""
        del num_steps
        mlp = meta_params["mlp"]
        num_layers = len(self.hidden_sizes) + 1
        sizes = (len(self.momentum_decays), len(self.rms_decays), len(self.adafactor_decays))
        step_mult, exp_mult, eps = self.step_mult, self.exp_mult, self.unfactored_momentum_eps
        decays = lo_features.Decays(
            lo_features.reparameterized_decays(self.momentum_decays, meta_params["decays"]["momentum"]),
            lo_features.reparameterized_decays(self.rms_decays, meta_params["decays"]["rms"]),
            lo_features.reparameterized_decays(self.adafactor_decays, meta_params["decays"]["adafactor"]),
        )

        def init_fn(params):
            return AdafacMLPLOState(lo_features.init_accumulators(params, *sizes), jnp.zeros((), jnp.int32))

        def update_fn(grads, state, params=None, **extra_args):
            del extra_args
            if params is None:
                raise ValueError("the adafac_mlp_lo learned optimizer needs params: call update(grads, state, params)")
            chex.assert_trees_all_equal_shapes(grads, params)
            accumulators, preconditioned = lo_features.update_accumulators(state.accumulators, grads, decays)
            time_input = features.time_features(state.iteration)

            def tensor_update(p, g, m, v, y, moments):
                p32 = lo_features.as_tensor(p).astype(jnp.float32)
                g = lo_features.as_tensor(g).astype(jnp.float32)
                groups = lo_features.feature_groups(g, p32, m, v, y, moments, eps)
                inputs = lo_features.second_moment_normalize(jnp.concatenate([groups[k] for k in FEATURE_GROUPS], -1))
                time_columns = jnp.broadcast_to(time_input, g.shape + time_input.shape)
                net = jnp.concatenate([inputs, time_columns], axis=-1)
                for i in range(num_layers):
                    net = net @ mlp[f"w{i}"] + mlp[f"b{i}"]
                    if i < num_layers - 1:
                        net = jax.nn.relu(net)
                step = net[..., 0] * jnp.exp(net[..., 1] * exp_mult) * step_mult
                return (-step).reshape(jnp.shape(p)).astype(jnp.result_type(p))

            leaves, treedef = jax.tree.flatten(params)
            per_leaf = [treedef.flatten_up_to(tree) for tree in (
                grads, accumulators.momenta, accumulators.rms, preconditioned, accumulators.factored)]
            updates = [tensor_update(p, *(tree[i] for tree in per_leaf)) for i, p in enumerate(leaves)]
            return treedef.unflatten(updates), AdafacMLPLOState(accumulators, state.iteration + 1)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
