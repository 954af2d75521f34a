"""The built-in families' networks as flax.linen modules: MLP, CNN and a causal transformer LM.

These are the modules `mlp_image`, `cnn_image` and `transformer_lm` (and `few_shot`'s CNN)
apply, written as a user writes a model for `tasks.from_flax`. Their parameters keep the
families' names, so checkpoints, exported optimizers and name-based rules (Celo2's Adam
regex) see the same tree as before: `{"layer_i": {"w", "b"}}` for the MLP, `{"conv_i": {"w",
"b"}, "head": {"w", "b"}}` for the CNN, and for the LM `{"embed": {"tokens", "positions"},
"block_i": {"ln1", "attn": {"qkv", "out"}, "ln2", "mlp": {"w1", "b1", "w2", "b2"}},
"final_ln", "head"}`, LayerNorms holding `{"scale", "bias"}`. That is why they use `Linear`
and `Conv` below (params `w`, `b`) rather than `nn.Dense` and `nn.Conv` (`kernel`, `bias`).

Per-task variations that change no shape are call arguments, so one module serves a vmapped
batch of tasks: the MLP's and CNN's `activation` index (applied with `lax.switch`) and the
LM's `dropout_rate` (masks from the `dropout` rng). The initialisers give each family's
distribution at init scale 1 (fan-in-scaled normal weights, zero biases); the families draw
their initial params themselves, all weights from one RNG call (see tasks/sampling.py),
times the task's sampled init scale.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Initializer = Callable[..., Array]

ACTIVATIONS: Dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
}
POOLINGS = ("max", "avg", "none")
LAYER_NORM_EPSILON = 1e-5


def fan_in_normal(scale: float = 1.0) -> Initializer:
    """Returns the initialiser w ~ N(0, scale / fan_in), fan_in = all axes but the last (HWIO kernels too)."""
    return nn.initializers.variance_scaling(scale, "fan_in", "normal")


def apply_activation(index: Union[Array, int], x: Array, names: Sequence[str] = tuple(ACTIVATIONS)) -> Array:
    """Applies activation `names[index]` to `x` with lax.switch (the index may be traced)."""
    branches = [ACTIVATIONS[name] for name in names]
    if len(branches) == 1:
        return branches[0](x)
    return jax.lax.switch(jnp.clip(index, 0, len(branches) - 1), branches, x)


def pool(x: Array, pooling: str) -> Array:
    """2x2 stride-2 max or average pooling of NHWC `x`; unchanged for "none" or a map under 2 pixels wide."""
    if pooling == "none" or x.shape[1] < 2 or x.shape[2] < 2:
        return x
    window, strides = (1, 2, 2, 1), (1, 2, 2, 1)
    if pooling == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, "VALID")
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, "VALID") / 4.0


class Linear(nn.Module):
    """`x @ w + b`, params `w` [in, features] and `b` [features] (nn.Dense with the families' names)."""

    features: int
    kernel_init: Initializer = fan_in_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("w", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        b = self.param("b", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return x @ w + b


class Conv(nn.Module):
    """Stride-1 SAME convolution of NHWC inputs, params `w` [k, k, in, features] (HWIO) and `b` [features]."""

    features: int
    kernel_size: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        w = self.param("w", fan_in_normal(), shape, jnp.float32)
        b = self.param("b", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b


class MLP(nn.Module):
    """A multi-layer perceptron on flattened inputs: `features` are the widths of its layers, the last the output.

    `activation` indexes `activations` and follows every layer but the last. With `mup` the
    readout starts at w ~ N(0, 1 / fan_in^2), the task side of the maximal-update
    parameterisation (see tasks/mlp_image.py).
    """

    features: Tuple[int, ...]
    activations: Tuple[str, ...] = tuple(ACTIVATIONS)
    mup: bool = False

    @nn.compact
    def __call__(self, x: Array, activation: Union[Array, int] = 0) -> Array:
        hidden = x.reshape(x.shape[0], -1)
        widths = (hidden.shape[1],) + tuple(self.features)
        for i, width in enumerate(self.features):
            readout = i == len(self.features) - 1
            kernel_init = fan_in_normal(1.0 / widths[i] if self.mup and readout else 1.0)
            hidden = Linear(width, kernel_init, name=f"layer_{i}")(hidden)
            if not readout:
                hidden = apply_activation(activation, hidden, self.activations)
        return hidden


class CNN(nn.Module):
    """Convs (`channels`, `kernel_sizes`), each followed by the activation and `pooling`, a spatial mean
    and a dense head with `num_outputs` logits."""

    channels: Tuple[int, ...]
    kernel_sizes: Tuple[int, ...]
    num_outputs: int
    activations: Tuple[str, ...] = tuple(ACTIVATIONS)
    pooling: str = "avg"

    @nn.compact
    def __call__(self, images: Array, activation: Union[Array, int] = 0) -> Array:
        chex.assert_rank(images, 4)
        hidden = images
        for i, (width, kernel_size) in enumerate(zip(self.channels, self.kernel_sizes)):
            hidden = Conv(width, kernel_size, name=f"conv_{i}")(hidden)
            hidden = pool(apply_activation(activation, hidden, self.activations), self.pooling)
        return Linear(self.num_outputs, name="head")(jnp.mean(hidden, axis=(1, 2)))


def dropout(x: Array, rate: Optional[Array], draws: Optional[Array]) -> Array:
    """Inverted dropout of `x` at a (possibly traced) `rate` from U(0, 1) `draws`; `x` itself when rate is None."""
    if rate is None:
        return x
    return jnp.where(draws >= rate, x / (1.0 - rate), 0.0)


class Embedding(nn.Module):
    """Token and learned position embeddings, params `tokens` [vocab, width] and `positions` [max_len, width]."""

    vocab_size: int
    width: int
    max_len: int

    @nn.compact
    def __call__(self, tokens: Array) -> Array:
        init = nn.initializers.normal(1.0 / math.sqrt(self.width))
        table = self.param("tokens", init, (self.vocab_size, self.width), jnp.float32)
        positions = self.param("positions", init, (self.max_len, self.width), jnp.float32)
        # a one-hot matmul rather than a gather: as the hand-written network did, and its gradient is a matmul too
        one_hot = jax.nn.one_hot(tokens, self.vocab_size, dtype=jnp.float32)
        return one_hot @ table + positions[: tokens.shape[1]]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention without biases, params `qkv` [width, 3 width] and `out` [width, width]."""

    heads: int
    out_init: Initializer = fan_in_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        batch, time, width = x.shape
        head_dim = width // self.heads
        qkv = self.param("qkv", fan_in_normal(), (width, 3 * width), jnp.float32)
        out = self.param("out", self.out_init, (width, width), jnp.float32)
        q, k, v = (t.reshape(batch, time, self.heads, head_dim) for t in jnp.split(x @ qkv, 3, axis=-1))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        causal = jnp.tril(jnp.ones((time, time), bool))
        weights = jax.nn.softmax(jnp.where(causal, scores, -1e30), axis=-1)
        return jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(x.shape) @ out


class FeedForward(nn.Module):
    """`gelu(x @ w1 + b1) @ w2 + b2`, the transformer block's MLP, `hidden` units wide."""

    hidden: int
    out_init: Initializer = fan_in_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        width = x.shape[-1]
        w1 = self.param("w1", fan_in_normal(), (width, self.hidden), jnp.float32)
        b1 = self.param("b1", nn.initializers.zeros_init(), (self.hidden,), jnp.float32)
        w2 = self.param("w2", self.out_init, (self.hidden, width), jnp.float32)
        b2 = self.param("b2", nn.initializers.zeros_init(), (width,), jnp.float32)
        return jax.nn.gelu(x @ w1 + b1) @ w2 + b2


def layer_norm(name: str) -> nn.LayerNorm:
    """Returns the LayerNorm the LM uses (epsilon 1e-5, variance as the mean squared deviation)."""
    return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, use_fast_variance=False, name=name)


class TransformerBlock(nn.Module):
    """A pre-LayerNorm block: x + attn(ln1(x)), then x + mlp(ln2(x)), each residual branch with dropout."""

    heads: int
    mlp_width: int
    residual_init: Initializer

    @nn.compact
    def __call__(self, x: Array, rate: Optional[Array], draws: Tuple[Optional[Array], Optional[Array]]) -> Array:
        attended = CausalSelfAttention(self.heads, self.residual_init, name="attn")(layer_norm("ln1")(x))
        x = x + dropout(attended, rate, draws[0])
        hidden = FeedForward(self.mlp_width, self.residual_init, name="mlp")(layer_norm("ln2")(x))
        return x + dropout(hidden, rate, draws[1])


class TransformerLM(nn.Module):
    """A decoder-only GPT on int tokens [batch, time <= max_len]: next-token logits [batch, time, vocab].

    Residual output projections start at N(0, 1 / (2 depth fan_in)). With a `dropout_rate` (a
    traced scalar is fine) every residual branch is dropped out with masks from the `dropout`
    rng, all drawn in one call.
    """

    vocab_size: int
    width: int
    depth: int
    heads: int
    mlp_width: int
    max_len: int

    @nn.compact
    def __call__(self, tokens: Array, dropout_rate: Optional[Array] = None) -> Array:
        chex.assert_rank(tokens, 2)
        x = Embedding(self.vocab_size, self.width, self.max_len, name="embed")(tokens)
        if dropout_rate is None:
            draws = [None] * (2 * self.depth)
        else:
            draws = jax.random.uniform(self.make_rng("dropout"), (2 * self.depth,) + x.shape)
        residual_init = fan_in_normal(1.0 / (2 * self.depth))
        for i in range(self.depth):
            block = TransformerBlock(self.heads, self.mlp_width, residual_init, name=f"block_{i}")
            x = block(x, dropout_rate, (draws[2 * i], draws[2 * i + 1]))
        return Linear(self.vocab_size, name="head")(layer_norm("final_ln")(x))
