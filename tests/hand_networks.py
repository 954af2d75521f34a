"""The built-in families' networks as they were written by hand before tasks/networks.py (raw matmuls on dicts).

Kept as the oracle of the flax modules' parity tests (tests/test_networks.py) and as the
`--network hand` side of scripts/bench_meta_train.py's side-by-side throughput comparison.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from tasks.cnn_image import CNNImageFamily, CNNImageTask
from tasks.mlp_image import MLPImageFamily, MLPImageTask
from tasks.networks import apply_activation, pool
from tasks.transformer_lm import TransformerLMFamily, TransformerLMTask

Array = jax.Array
Params = Dict[str, Any]


def hand_mlp(params: Params, x: Array, activation: Array, activations: Sequence[str]) -> Array:
    """Returns the logits of the MLP `params` ({'layer_i': {'w', 'b'}}) on `x` flattened per example."""
    hidden = x.reshape(x.shape[0], -1)
    num_layers = len(params)
    for i in range(num_layers):
        layer = params[f"layer_{i}"]
        hidden = hidden @ layer["w"] + layer["b"]
        if i < num_layers - 1:
            hidden = apply_activation(activation, hidden, activations)
    return hidden


def hand_cnn(params: Params, images: Array, activation: Array, activations: Sequence[str], pooling: str) -> Array:
    """Returns the logits of the CNN `params` ({'conv_i', 'head'}) on NHWC `images`."""
    hidden = images
    num_convs = sum(1 for name in params if name.startswith("conv_"))
    for i in range(num_convs):
        layer = params[f"conv_{i}"]
        hidden = jax.lax.conv_general_dilated(
            hidden, layer["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        ) + layer["b"]
        hidden = pool(apply_activation(activation, hidden, activations), pooling)
    features = jnp.mean(hidden, axis=(1, 2))
    return features @ params["head"]["w"] + params["head"]["b"]


def _layer_norm(x: Array, p: Dict[str, Array]) -> Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"]


def _dropout(x: Array, rate: Optional[Array], draws: Optional[Array]) -> Array:
    if rate is None:
        return x
    return jnp.where(draws >= rate, x / (1.0 - rate), 0.0)


def hand_transformer(params: Params, tokens: Array, heads: int, rate: Optional[Array] = None,
                     key: Optional[Array] = None) -> Array:
    """Returns next-token logits [batch, time, vocab] of the LM `params` on int `tokens` [batch, time]."""
    depth = sum(1 for name in params if name.startswith("block_"))
    vocab, width = params["embed"]["tokens"].shape
    time = tokens.shape[1]
    one_hot = jax.nn.one_hot(tokens, vocab, dtype=jnp.float32)
    x = one_hot @ params["embed"]["tokens"] + params["embed"]["positions"][:time]
    draws = jax.random.uniform(key, (2 * depth,) + x.shape) if rate is not None else [None] * (2 * depth)
    head_dim = width // heads
    causal = jnp.tril(jnp.ones((time, time), bool))
    for i in range(depth):
        block = params[f"block_{i}"]
        q, k, v = jnp.split(_layer_norm(x, block["ln1"]) @ block["attn"]["qkv"], 3, axis=-1)
        q, k, v = (t.reshape(t.shape[0], time, heads, head_dim) for t in (q, k, v))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        weights = jax.nn.softmax(jnp.where(causal, scores, -1e30), axis=-1)
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(x.shape)
        x = x + _dropout(attended @ block["attn"]["out"], rate, draws[2 * i])
        hidden = jax.nn.gelu(_layer_norm(x, block["ln2"]) @ block["mlp"]["w1"] + block["mlp"]["b1"])
        x = x + _dropout(hidden @ block["mlp"]["w2"] + block["mlp"]["b2"], rate, draws[2 * i + 1])
    return _layer_norm(x, params["final_ln"]) @ params["head"]["w"] + params["head"]["b"]


class HandMLPTask(MLPImageTask):
    """An mlp_image task applying the hand-written MLP."""

    def apply(self, params: Params, x: Array) -> Array:
        return hand_mlp(params, x, self.cfg["activation"], self.activations)


class HandMLPFamily(MLPImageFamily):
    """mlp_image with the hand-written network."""

    def task(self, cfg: Dict[str, Array]) -> HandMLPTask:
        return HandMLPTask(self, cfg)


class HandCNNTask(CNNImageTask):
    """A cnn_image task applying the hand-written CNN."""

    def apply(self, params: Params, x: Array) -> Array:
        return hand_cnn(params, x, self.cfg["activation"], self.activations, self.pooling)


class HandCNNFamily(CNNImageFamily):
    """cnn_image with the hand-written network."""

    def task(self, cfg: Dict[str, Array]) -> HandCNNTask:
        return HandCNNTask(self, cfg)


class HandTransformerLMTask(TransformerLMTask):
    """A transformer_lm task applying the hand-written LM."""

    def apply(self, params: Params, tokens: Array, key: Optional[Array] = None) -> Array:
        return hand_transformer(params, tokens, self.heads, self.cfg["dropout"] if self.use_dropout else None, key)


class HandTransformerLMFamily(TransformerLMFamily):
    """transformer_lm with the hand-written network."""

    def task(self, cfg: Dict[str, Array]) -> HandTransformerLMTask:
        return HandTransformerLMTask(self, cfg)


HAND_FAMILIES = {MLPImageFamily: HandMLPFamily, CNNImageFamily: HandCNNFamily,
                 TransformerLMFamily: HandTransformerLMFamily}
BuiltIn = Union[MLPImageFamily, CNNImageFamily, TransformerLMFamily]


def hand_written(family: BuiltIn) -> BuiltIn:
    """Returns the same family (same settings and data) whose tasks apply the hand-written network."""
    if type(family) not in HAND_FAMILIES:
        raise ValueError(f"no hand-written network for {type(family).__name__}; expected one of "
                         f"{', '.join(c.__name__ for c in HAND_FAMILIES)}")
    data, static = family._tree_flatten()
    return HAND_FAMILIES[type(family)]._tree_unflatten(static, data)
