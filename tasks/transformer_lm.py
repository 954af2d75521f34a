"""Decoder-only (causal) transformer language models on character-level text.

Static (constructor arguments): the text (see tasks/text_data.py: `tiny_shakespeare` from
the data folder, `sklearn_docs` bundled, `file:PATH`, `tfds:tiny_shakespeare`, `tfds:lm1b`),
width, depth, heads, MLP width multiple, sequence length and batch size. The model is a
pre-LayerNorm GPT: learned token and position embeddings, `depth` blocks of causal
multi-head self-attention and a GELU MLP, a final LayerNorm and an untied output layer: the
flax module `tasks.networks.TransformerLM`. Params are plain nested dicts.

Each task samples an init scale, log-uniform in [min_init_scale, max_init_scale], that
multiplies every weight matrix's fan-in-scaled normal init (embeddings: N(0, scale^2 / width));
residual output projections are further divided by sqrt(2 * depth). With `max_dropout > 0`
a dropout rate, uniform in [0, max_dropout], is sampled too and applied (after attention and
MLP, from the loss key) in every loss evaluation; the default `max_dropout=0` gives the
dropout-free family.

Loss: mean next-token cross-entropy in nats per token. Normaliser: loss / log(vocab_size),
the loss of a uniform prediction.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import chex
import jax
import jax.numpy as jnp
import optax

from tasks.base import Array, Task, TaskError, TaskFamily, check_split
from tasks.networks import TransformerLM
from tasks.registry import register
from tasks.sampling import check_range, log_uniform, normal_draws
from tasks.text_data import TextDataset, load_text

Params = Dict[str, Dict[str, Array]]
LMConfig = Dict[str, Array]


class TransformerLMTask(Task):
    """One causal transformer LM: batches are int32 token windows [batch, seq_len + 1]."""

    name = "transformer_lm"

    def __init__(self, family: "TransformerLMFamily", cfg: LMConfig):
        self.data: TextDataset = family.data
        self.width, self.depth, self.heads = family.width, family.depth, family.heads
        self.mlp_width = family.mlp_ratio * family.width
        self.seq_len, self.batch_size = family.seq_len, family.batch_size
        self.use_dropout = family.max_dropout > 0
        self.network = family.network
        self.cfg = cfg

    def init(self, key: Array) -> Params:
        """Returns fan-in-scaled normal weights times the init scale, unit LayerNorm scales, zero biases."""
        vocab, d, m, scale = self.data.vocab_size, self.width, self.mlp_width, self.cfg["init_scale"]
        block_shapes = [(d, 3 * d), (d, d), (d, m), (m, d)]
        draws = iter(normal_draws(key, [(vocab, d), (self.seq_len, d)] + block_shapes * self.depth + [(d, vocab)]))
        residual = 1.0 / math.sqrt(2 * self.depth)

        def dense(fan_in: int, extra: float = 1.0) -> Array:
            return next(draws) * (scale * extra / math.sqrt(fan_in))

        def norm() -> Dict[str, Array]:
            return {"scale": jnp.ones((d,), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)}

        params = {"embed": {"tokens": dense(d), "positions": dense(d)}}
        for i in range(self.depth):
            attn = {"qkv": dense(d), "out": dense(d, residual)}
            mlp = {"w1": dense(d), "b1": jnp.zeros((m,), jnp.float32),
                   "w2": dense(m, residual), "b2": jnp.zeros((d,), jnp.float32)}
            params[f"block_{i}"] = {"ln1": norm(), "attn": attn, "ln2": norm(), "mlp": mlp}
        params["final_ln"] = norm()
        params["head"] = {"w": dense(d), "b": jnp.zeros((vocab,), jnp.float32)}
        return params

    def sample_batch(self, key: Array, split: str) -> Array:
        """Draws int32 token windows [batch, seq_len + 1] from `split` inside jit (inputs and shifted targets)."""
        return self.data.sample(key, check_split(split), self.batch_size, self.seq_len + 1)

    def apply(self, params: Params, tokens: Array, key: Optional[Array] = None) -> Array:
        """Returns next-token logits [batch, time, vocab] of the family's flax LM for int tokens [batch, time]
        (time <= seq_len); `key` draws the dropout masks when the family samples dropout."""
        if not self.use_dropout:
            return self.network.apply({"params": params}, tokens)
        return self.network.apply({"params": params}, tokens, self.cfg["dropout"], rngs={"dropout": key})

    def loss(self, params: Params, key: Array, batch: Array) -> Array:
        """Returns the mean next-token cross-entropy in nats per token (float32)."""
        chex.assert_shape(batch, (None, self.seq_len + 1))
        logits = self.apply(params, batch[:, :-1], key)
        targets = jax.nn.one_hot(batch[:, 1:], self.data.vocab_size, dtype=jnp.float32)
        return jnp.mean(optax.softmax_cross_entropy(logits, targets)).astype(jnp.float32)

    def normalizer(self, loss: Array) -> Array:
        """Returns loss / log(vocab_size)."""
        return loss / math.log(self.data.vocab_size)


@register("transformer_lm")
class TransformerLMFamily(TaskFamily):
    """Causal transformer LMs with static width/depth/heads/sequence length; the init scale (and dropout) vary.

    cfg fields: `init_scale` (float32), `dropout` (float32; 0 unless max_dropout > 0).
    """

    name = "transformer_lm"
    data_fields = ("data",)

    def __init__(
        self,
        dataset: str = "sklearn_docs",
        width: int = 32,
        depth: int = 2,
        heads: int = 2,
        mlp_ratio: int = 4,
        seq_len: int = 32,
        batch_size: int = 16,
        data_dir: Optional[str] = None,
        tokenizer: str = "auto",
        max_chars: Optional[int] = None,
        min_init_scale: float = 0.5,
        max_init_scale: float = 2.0,
        max_dropout: float = 0.0,
        tfds_data_dir: Optional[str] = None,
        download: bool = False,
    ):
        sizes = dict(width=width, depth=depth, heads=heads, mlp_ratio=mlp_ratio, seq_len=seq_len, batch_size=batch_size)
        if min(int(v) for v in sizes.values()) < 1:
            raise TaskError(f"transformer_lm sizes must be positive integers, got {sizes}")
        if int(width) % int(heads):
            raise TaskError(f"transformer_lm width ({width}) must be divisible by heads ({heads})")
        if not 0.0 <= max_dropout < 1.0:
            raise TaskError(f"transformer_lm needs 0 <= max_dropout < 1, got {max_dropout}")
        self.dataset_name = dataset
        self.width, self.depth, self.heads = int(width), int(depth), int(heads)
        self.mlp_ratio, self.seq_len, self.batch_size = int(mlp_ratio), int(seq_len), int(batch_size)
        self.data_dir = data_dir
        self.init_scale_range = check_range("transformer_lm", "init_scale", min_init_scale, max_init_scale)
        self.max_dropout = float(max_dropout)
        self.data = load_text(
            dataset, data_dir, tokenizer=tokenizer, max_chars=max_chars, tfds_data_dir=tfds_data_dir, download=download
        )
        self.network = TransformerLM(self.data.vocab_size, self.width, self.depth, self.heads,
                                     self.mlp_ratio * self.width, self.seq_len)
        short = [s for s, t in self.data.tokens.items() if t.shape[0] < self.seq_len + 1]
        if short:
            raise TaskError(f"transformer_lm: text {dataset!r} split(s) {short} are shorter than seq_len + 1 tokens")

    def sample(self, key: Array) -> LMConfig:
        """Samples a log-uniform init scale and (with max_dropout > 0) a uniform dropout rate."""
        scale_draw, dropout_draw = jax.random.uniform(key, (2,), jnp.float32)
        scale = log_uniform(scale_draw, self.init_scale_range)
        return {"init_scale": scale, "dropout": dropout_draw * self.max_dropout}

    def task(self, cfg: LMConfig) -> TransformerLMTask:
        """Builds the task described by `cfg` (works with traced cfg and family leaves)."""
        chex.assert_rank([cfg["init_scale"], cfg["dropout"]], 0)
        return TransformerLMTask(self, cfg)
