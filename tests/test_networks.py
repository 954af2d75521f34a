"""The built-in families' flax networks (tasks/networks.py): same params tree and same losses as the hand-written
networks they replaced (tests/hand_networks.py), a module init of the families' distribution, and the modules
usable through tasks.from_flax like a user's model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks
from tasks import networks
from tests.hand_networks import hand_written

TINY_LM = dict(width=16, depth=1, heads=2, seq_len=12, batch_size=4)


def shapes(tree):
    return jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), tree)


def losses_match(family, *, rtol: float = 2e-6):
    """Asserts a task's loss and gradient equal the hand-written network's on the same params and batch; returns
    (task, params)."""
    cfg = family.sample(jax.random.key(0))
    task, hand_task = family.task(cfg), hand_written(family).task(cfg)
    params = jax.jit(task.init)(jax.random.key(1))
    batch = jax.jit(task.sample_batch, static_argnums=1)(jax.random.key(2), "train")
    loss, grad = jax.jit(jax.value_and_grad(lambda p: task.loss(p, None, batch)))(params)
    hand_loss, hand_grad = jax.jit(jax.value_and_grad(lambda p: hand_task.loss(p, None, batch)))(params)
    np.testing.assert_allclose(loss, hand_loss, rtol=rtol)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad, hand_grad)
    return task, params


@pytest.mark.parametrize("activations,mup", [(tuple(networks.ACTIVATIONS), False), (("tanh",), True)])
def test_mlp_matches_the_hand_written_network_and_keeps_its_params_tree(activations, mup):
    family = tasks.get("mlp_image", hidden=(16, 8), batch_size=16, activations=activations, mup=mup)
    task, params = losses_match(family)
    assert set(params) == {"layer_0", "layer_1", "layer_2"} and set(params["layer_0"]) == {"w", "b"}
    module_params = family.network.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    assert shapes(module_params) == shapes(params)


@pytest.mark.parametrize("pooling,kernels", [("avg", (3, 3)), ("max", (3, 1))])
def test_cnn_matches_the_hand_written_network_and_keeps_its_params_tree(pooling, kernels):
    family = tasks.get("cnn_image", channels=(4, 6), kernel_size=kernels, pooling=pooling, batch_size=8)
    task, params = losses_match(family)
    assert set(params) == {"conv_0", "conv_1", "head"}
    assert shapes(family.network.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]) == shapes(params)
    images = task.sample_batch(jax.random.key(4), "valid")[0]
    np.testing.assert_allclose(tasks.cnn_image.apply_cnn(params, images, task.cfg["activation"], task.activations,
                                                         pooling), task.apply(params, images), rtol=1e-6)


def test_transformer_matches_the_hand_written_network_and_keeps_its_params_tree():
    family = tasks.get("transformer_lm", **TINY_LM)
    task, params = losses_match(family)
    tokens = task.sample_batch(jax.random.key(2), "train")
    assert shapes(family.network.init(jax.random.key(0), tokens[:, :-1])["params"]) == shapes(params)
    assert set(params["block_0"]) == {"ln1", "attn", "ln2", "mlp"} and set(params["final_ln"]) == {"scale", "bias"}


def test_transformer_dropout_uses_the_loss_key_at_the_task_rate():
    """Dropout masks come from the loss key (same key, same loss), and a sampled rate of 0 is the dropout-free LM."""
    family = tasks.get("transformer_lm", max_dropout=0.5, **TINY_LM)
    task = family.task({"init_scale": jnp.float32(1.0), "dropout": jnp.float32(0.4)})
    params = task.init(jax.random.key(1))
    tokens = task.sample_batch(jax.random.key(2), "train")
    loss = jax.jit(task.loss)
    same, again, other = (loss(params, jax.random.key(k), tokens) for k in (5, 5, 6))
    assert same == again and same != other
    rate_zero = family.task({"init_scale": jnp.float32(1.0), "dropout": jnp.float32(0.0)})
    dropout_free = tasks.get("transformer_lm", **TINY_LM).task(rate_zero.cfg)
    np.testing.assert_allclose(rate_zero.loss(params, jax.random.key(5), tokens),
                               dropout_free.loss(params, None, tokens), rtol=1e-6)


def test_module_init_draws_the_families_distribution():
    """The modules' own initialisers (what a user gets from `model.init`) match the families' init at scale 1."""
    family = tasks.get("transformer_lm", width=32, depth=2, heads=2, seq_len=32, batch_size=2)
    task = family.task({"init_scale": jnp.float32(1.0), "dropout": jnp.float32(0.0)})
    family_params = jax.jit(task.init)(jax.random.key(0))
    module_params = jax.jit(family.network.init)(jax.random.key(1), jnp.zeros((1, 32), jnp.int32))["params"]
    for path in (("embed", "tokens"), ("block_0", "attn", "qkv"), ("block_1", "attn", "out"), ("block_1", "mlp", "w2"),
                 ("head", "w"), ("final_ln", "scale"), ("block_0", "mlp", "b1")):
        ours, theirs = ([float(jnp.std(_at(p, path))), float(jnp.mean(_at(p, path)))]
                        for p in (module_params, family_params))
        np.testing.assert_allclose(ours, theirs, rtol=0.1, atol=0.02, err_msg=str(path))


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def test_a_built_in_network_is_a_model_for_from_flax():
    """The family's MLP module, given to tasks.from_flax with the family's data, computes the family's loss."""
    family = tasks.get("mlp_image", hidden=(16,), batch_size=32, activations=("relu",))
    data = {split: family.data.full_split(split) for split in ("train", "valid", "test")}
    adapted = tasks.from_flax(family.network, {s: (np.asarray(x), np.asarray(y)) for s, (x, y) in data.items()},
                              batch_size=32)
    task = family.task(family.sample(jax.random.key(0)))
    params = task.init(jax.random.key(1))
    batch = task.sample_batch(jax.random.key(2), "test")
    adapted_task = adapted.task(adapted.sample(jax.random.key(3)))
    np.testing.assert_allclose(adapted_task.loss(params, jax.random.key(4), batch), task.loss(params, None, batch),
                               rtol=1e-6)
    np.testing.assert_allclose(adapted_task.normalizer(1.0), task.normalizer(1.0), rtol=1e-6)
