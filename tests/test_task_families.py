"""The CNN, transformer-LM and few-shot families: shapes, semantics (causality, episodes) and errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks
from tasks.cnn_image import apply_cnn, conv_shapes, init_cnn

TINY_LM = dict(width=16, depth=1, heads=2, seq_len=12, batch_size=4)


def assert_one_line(error: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize("pooling,kernels", [("max", (3, 5)), ("avg", 3), ("none", (1, 3))])
def test_cnn_pooling_and_kernels_are_static_choices(pooling, kernels):
    family = tasks.get("cnn_image", channels=(4, 6), kernel_size=kernels, pooling=pooling, activations=("relu",),
                       batch_size=8)
    expected_kernels = (kernels,) * 2 if isinstance(kernels, int) else kernels
    assert [s[:2] for s in family.shapes] == [(k, k) for k in expected_kernels]
    task = family.task(family.sample(jax.random.key(0)))
    params = jax.eval_shape(task.init, jax.random.key(1))
    assert params["conv_0"]["w"].shape == (expected_kernels[0],) * 2 + (1, 4) and params["head"]["w"].shape == (6, 10)
    batch = jax.eval_shape(lambda k: task.sample_batch(k, "test"), jax.random.key(2))
    assert batch[0].shape == (8, 8, 8, 1) and jax.eval_shape(task.loss, params, None, batch).shape == ()


def test_cnn_pooling_changes_the_function():
    shapes = conv_shapes(1, (3, 3), (3, 3))
    params = init_cnn(jax.random.key(0), shapes, 2, jnp.float32(1.0))
    images = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    outputs = [apply_cnn(params, images, jnp.int32(0), ("tanh",), p) for p in ("max", "avg", "none")]
    assert not np.allclose(outputs[0], outputs[1]) and not np.allclose(outputs[1], outputs[2])


def test_cnn_errors_are_one_line():
    with pytest.raises(tasks.TaskError) as error:
        tasks.get("cnn_image", pooling="mean")
    assert_one_line(error, "pooling", "max")
    with pytest.raises(tasks.TaskError) as error:
        tasks.get("cnn_image", channels=(4, 8), kernel_size=(3,))
    assert_one_line(error, "kernel")


def test_transformer_is_causal_and_reports_nats_per_token():
    family = tasks.get("transformer_lm", **TINY_LM)
    task = family.task({"init_scale": jnp.float32(1.0), "dropout": jnp.float32(0.0)})
    params = jax.jit(task.init)(jax.random.key(0))
    tokens = jax.jit(task.sample_batch, static_argnums=1)(jax.random.key(1), "train")
    assert tokens.shape == (4, 13) and tokens.dtype == jnp.int32
    changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % family.data.vocab_size)
    apply = jax.jit(task.apply)
    logits, changed_logits = apply(params, tokens[:, :-1]), apply(params, changed[:, :-1])
    np.testing.assert_allclose(logits[:, :7], changed_logits[:, :7], atol=1e-5)
    assert not np.allclose(logits[:, 7:], changed_logits[:, 7:])
    flat = {**params, "head": {"w": jnp.zeros_like(params["head"]["w"]), "b": jnp.zeros_like(params["head"]["b"])}}
    uniform = jax.jit(task.loss)(flat, jax.random.key(2), tokens)
    np.testing.assert_allclose(uniform, math.log(family.data.vocab_size), rtol=1e-5)
    np.testing.assert_allclose(task.normalizer(uniform), 1.0, rtol=1e-5)


def test_transformer_params_are_plain_dicts_and_init_scale_varies():
    family = tasks.get("transformer_lm", **TINY_LM)
    cfgs = jax.vmap(family.sample)(jax.random.split(jax.random.key(0), 8))
    assert np.all(np.asarray(cfgs["dropout"]) == 0.0) and np.ptp(np.asarray(cfgs["init_scale"])) > 0.1
    params = family.task(jax.tree.map(lambda x: x[0], cfgs)).init(jax.random.key(1))
    assert set(params) == {"embed", "block_0", "final_ln", "head"}
    assert all(type(node) is dict for node in (params, params["block_0"], params["block_0"]["attn"]))
    assert params["block_0"]["attn"]["qkv"].shape == (16, 48) and params["embed"]["positions"].shape == (12, 16)


def test_transformer_dropout_variant_uses_the_loss_key():
    family = tasks.get("transformer_lm", max_dropout=0.5, **TINY_LM)
    task = family.task({"init_scale": jnp.float32(1.0), "dropout": jnp.float32(0.3)})
    params, batch = jax.jit(task.init)(jax.random.key(0)), task.data.sample(jax.random.key(1), "train", 4, 13)
    loss = jax.jit(task.loss)
    losses = [float(loss(params, jax.random.key(k), batch)) for k in (2, 2, 3)]
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_transformer_errors_are_one_line():
    with pytest.raises(tasks.TaskError) as error:
        tasks.get("transformer_lm", width=10, heads=3)
    assert_one_line(error, "divisible")
    with pytest.raises(tasks.TaskError) as error:
        tasks.get("transformer_lm", seq_len=5000)
    assert_one_line(error, "seq_len")


def test_few_shot_episodes_are_disjoint_and_labelled_by_class():
    family = tasks.get("few_shot", ways=3, shots=2, queries=4, classes=(1, 3, 5, 7, 9), hidden=(8,))
    assert family.images.dtype == jnp.uint8 and family.images.shape[:1] == (5,)
    cfgs = jax.jit(lambda f, k: jax.vmap(f.sample)(k))(family, jax.random.split(jax.random.key(0), 16))
    for i in range(16):
        cfg = jax.tree.map(lambda x: np.asarray(x[i]), cfgs)
        assert len(set(cfg["classes"].tolist())) == 3
        for row in range(3):
            used = np.concatenate([cfg["support"][row], cfg["query"][row], cfg["test"][row]])
            assert len(set(used.tolist())) == 2 + 4 + 4
    data = tasks.load_dataset("digits")
    train_x, train_y = np.asarray(data.x["train"]), np.asarray(data.y["train"])
    cfg = jax.tree.map(lambda x: x[0], cfgs)
    task = family.task(cfg)
    for split, size in (("train", 6), ("valid", 12), ("test", 12)):
        x, y = task.sample_batch(jax.random.key(1), split)
        assert x.shape == (size, 8, 8, 1) and y.tolist() == np.repeat(np.arange(3), size // 3).tolist()
        raw = np.rint(np.asarray(x) * data.feature_std[0] + data.feature_mean[0]).astype(np.uint8)
        for image, label in zip(raw, np.asarray(y)):
            matches = np.all(train_x == image, axis=(1, 2, 3))
            assert family.classes[int(cfg["classes"][label])] in set(train_y[matches].tolist())


def test_few_shot_query_set_is_the_valid_split_and_normalizer_uses_ways():
    family = tasks.get("few_shot", ways=4, shots=1, queries=3, model="cnn", channels=(4,), activations=("relu",))
    task = family.task(family.sample(jax.random.key(0)))
    support, query = task.sample_batch(jax.random.key(1), "train"), task.sample_batch(jax.random.key(9), "valid")
    assert support[0].shape[0] == 4 and query[0].shape[0] == 12
    np.testing.assert_array_equal(task.sample_batch(jax.random.key(2), "valid")[0], query[0])
    np.testing.assert_allclose(task.normalizer(jnp.float32(math.log(4))), 1.0, rtol=1e-6)


def test_few_shot_errors_are_one_line():
    with pytest.raises(tasks.TaskError) as error:
        tasks.get("few_shot", ways=3, classes=(0, 1))
    assert_one_line(error, "classes")
    with pytest.raises(tasks.TaskError) as error:
        tasks.get("few_shot", shots=100, queries=100)
    assert_one_line(error, "shots + 2 * queries")
