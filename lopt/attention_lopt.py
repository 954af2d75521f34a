"""A per-parameter attention block over a window of recent gradient features.

Each parameter keeps its last `window` tokens. A token holds two features of that step's
gradient: g / sqrt(v_hat) clipped to +-10 (v_hat the bias-corrected EMA of g^2 with decay
`rms_decay`) and g normalised per tensor. Tokens are embedded, given a learned embedding per
position in the window, and the newest token attends (single head) over the window, masked to
the steps seen so far. The attended value, plus a residual of the newest
embedding, goes through a ReLU MLP together with the normalised parameter value and time
features (folded into a bias); the MLP outputs direction and magnitude as in small_fc_lopt.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from lopt import features
from lopt.adafac_mlp import magnitude_step, require_params
from lopt.base import LearnedOptimizer, MetaParams, NumSteps, register
from lopt.normalization import clip_magnitude, stable_second_moment_normalize
from lopt.tensor_map import map_tensors

Array = jax.Array

NUM_TOKEN_FEATURES = 2
EPSILON = 1e-30
TOKEN_CLIP = 10.0


class AttentionState(NamedTuple):
    """Per-parameter token windows [..., window, 2] (oldest first), second-moment EMAs and the step count."""

    window: Any
    second_moment: Any
    iteration: Array


def _dense(key: Array, fan_in: int, fan_out: int) -> Array:
    return jax.random.normal(key, (fan_in, fan_out), jnp.float32) / jnp.sqrt(fan_in)


def attend_newest(meta_params: MetaParams, tokens: Array, valid: Array) -> Array:
    """Returns the newest token's attention output plus its embedding, [..., model_size], from tokens [..., W, F]."""
    embedded = tokens @ meta_params["embed"]["w"] + meta_params["embed"]["b"] + meta_params["position"]
    query = embedded[..., -1, :] @ meta_params["query"]
    keys = embedded @ meta_params["key"]
    values = embedded @ meta_params["value"]
    scores = jnp.einsum("...d,...wd->...w", query, keys) / jnp.sqrt(jnp.float32(query.shape[-1]))
    weights = jax.nn.softmax(jnp.where(valid, scores, -1e30), axis=-1)
    attended = jnp.einsum("...w,...wd->...d", weights, values)
    return attended @ meta_params["out"] + embedded[..., -1, :]


@register("attention")
@dataclasses.dataclass(frozen=True, kw_only=True)
class AttentionLOpt(LearnedOptimizer):
    """Single-head attention over each parameter's last `window` gradient tokens, then an MLP."""

    window: int = 8
    model_size: int = 16
    hidden_size: int = 32
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    rms_decay: float = 0.999
    time_scales: Tuple[float, ...] = features.TIME_SCALES

    def __post_init__(self) -> None:
        """Converts the fields to their declared types and checks the sizes."""
        super().__post_init__()
        if min(self.window, self.model_size, self.hidden_size) < 1:
            raise ValueError("attention needs window, model_size and hidden_size >= 1")

    def init(self, key: Array) -> MetaParams:
        """Returns embedding, position, attention and MLP weights."""
        keys = jax.random.split(key, 8)
        d, h = self.model_size, self.hidden_size
        mlp_inputs = d + 1 + len(self.time_scales)
        return {
            "embed": {"w": _dense(keys[0], NUM_TOKEN_FEATURES, d), "b": jnp.zeros((d,), jnp.float32)},
            "position": 0.1 * jax.random.normal(keys[1], (self.window, d), jnp.float32),
            "query": _dense(keys[2], d, d),
            "key": _dense(keys[3], d, d),
            "value": _dense(keys[4], d, d),
            "out": _dense(keys[5], d, d),
            "mlp": {
                "w0": _dense(keys[6], mlp_inputs, h), "b0": jnp.zeros((h,), jnp.float32),
                "w1": _dense(keys[7], h, 2), "b1": jnp.zeros((2,), jnp.float32),
            },
        }

    def transformation(
        self, meta_params: MetaParams, *, num_steps: NumSteps = None
    ) -> optax.GradientTransformationExtraArgs:
        """Returns the optax transformation defined by `meta_params`."""
        del num_steps
        window, model_size = self.window, self.model_size
        step_mult, exp_mult, rms_decay, time_scales = self.step_mult, self.exp_mult, self.rms_decay, self.time_scales
        mlp = meta_params["mlp"]

        def init_fn(params):
            return AttentionState(
                jax.tree.map(lambda p: jnp.zeros(p.shape + (window, NUM_TOKEN_FEATURES), jnp.float32), params),
                jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params),
                jnp.zeros((), jnp.int32),
            )

        def update_fn(grads, state, params=None, **extra_args):
            del extra_args
            require_params(params, "attention")
            chex.assert_trees_all_equal_shapes(grads, params)
            valid = jnp.arange(window) >= window - 1 - jnp.minimum(state.iteration, window - 1)
            time_bias = features.time_features(state.iteration, time_scales) @ mlp["w0"][model_size + 1:] + mlp["b0"]

            correction = 1.0 - rms_decay ** (state.iteration + 1).astype(jnp.float32)

            def tensor_update(g, p, tokens, v):
                g32 = clip_magnitude(g.astype(jnp.float32))
                v = rms_decay * v + (1.0 - rms_decay) * jnp.square(g32)
                scaled = jnp.clip(g32 * jax.lax.rsqrt(v / correction + EPSILON), -TOKEN_CLIP, TOKEN_CLIP)
                normalized = stable_second_moment_normalize(g32[..., None])[..., 0]
                token = jnp.stack([scaled, normalized], axis=-1)
                tokens = jnp.concatenate([tokens[..., 1:, :], token[..., None, :]], axis=-2)
                context = attend_newest(meta_params, tokens, valid)
                param = stable_second_moment_normalize(p.astype(jnp.float32)[..., None])
                first = jnp.concatenate([context, param], axis=-1) @ mlp["w0"][: model_size + 1] + time_bias
                out = jax.nn.relu(first) @ mlp["w1"] + mlp["b1"]
                return (-magnitude_step(out, step_mult, exp_mult)).astype(p.dtype), tokens, v

            updates, windows, second_moment = map_tensors(
                tensor_update, grads, params, state.window, state.second_moment, num_outputs=3
            )
            return updates, AttentionState(windows, second_moment, state.iteration + 1)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)
