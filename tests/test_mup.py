"""small_fc_lopt's maximal-update option (muLO): steps divided by fan-in, mup=False unchanged, the task's readout
init, and the multi-width config."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
import lopt.pretrained
import tasks
from lopt.small_fc_lopt import mup_step_scale
from meta_train import build as build_lib
from meta_train import config as config_lib

REPO = Path(__file__).resolve().parents[1]


def updates_after(optimizer, theta, params, grads, num_steps=3):
    """Returns the updates of the last of `num_steps` steps with fixed gradients (so momenta are non-trivial)."""
    tx = optimizer.transformation(theta)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(num_steps):
        updates, state = update(grads, state, params)
    return updates


def test_step_scale_rule_reads_every_axis_but_the_last_as_fan_in():
    assert mup_step_scale((64, 32)) == 1 / 64
    assert mup_step_scale((3, 3, 4, 8)) == 1 / 36
    assert mup_step_scale((10,)) == 1.0 and mup_step_scale(()) == 1.0


def test_same_meta_params_on_a_wider_tensor_step_by_the_ratio_of_fan_ins():
    key_w, key_g, key_b = jax.random.split(jax.random.key(0), 3)
    narrow_w, narrow_g = jax.random.normal(key_w, (8, 5)), jax.random.normal(key_g, (8, 5))
    bias = jax.random.normal(key_b, (5,))
    # Four stacked copies of the narrow tensor: the same per-tensor statistics, so the same per-parameter MLP outputs.
    narrow = {"w": narrow_w, "b": bias}
    wide = {"w": jnp.tile(narrow_w, (4, 1)), "b": bias}
    grads = {"narrow": {"w": narrow_g, "b": 0.1 * bias}, "wide": {"w": jnp.tile(narrow_g, (4, 1)), "b": 0.1 * bias}}
    optimizer = lopt.SmallFcLOpt(mup=True, step_mult=1e-2)
    theta = optimizer.init(jax.random.key(1))
    narrow_steps = updates_after(optimizer, theta, narrow, grads["narrow"])
    wide_steps = updates_after(optimizer, theta, wide, grads["wide"])
    np.testing.assert_allclose(wide_steps["w"], jnp.tile(narrow_steps["w"], (4, 1)) * (8 / 32), rtol=1e-5)
    np.testing.assert_allclose(wide_steps["b"], narrow_steps["b"], rtol=1e-6)
    plain = updates_after(lopt.SmallFcLOpt(step_mult=1e-2), theta, wide, grads["wide"])
    np.testing.assert_allclose(wide_steps["w"], plain["w"] / 32, rtol=1e-6)
    np.testing.assert_array_equal(wide_steps["b"], plain["b"])
    assert float(jnp.abs(plain["w"]).max()) > 0


def test_mup_divides_conv_kernels_and_large_blocked_tensors_by_fan_in():
    params = {"conv": jnp.linspace(-1, 1, 3 * 3 * 4 * 8).reshape(3, 3, 4, 8), "big": jnp.linspace(-2, 2, 600).reshape(30, 20)}
    grads = jax.tree.map(lambda p: 0.3 * p + 0.01, params)
    theta = lopt.SmallFcLOpt().init(jax.random.key(2))
    plain = updates_after(lopt.SmallFcLOpt(block_size=256), theta, params, grads)
    scaled = updates_after(lopt.SmallFcLOpt(block_size=256, mup=True), theta, params, grads)
    np.testing.assert_allclose(scaled["conv"], plain["conv"] / 36, rtol=1e-6)
    np.testing.assert_allclose(scaled["big"], plain["big"] / 30, rtol=1e-6)


def test_mup_false_is_the_default_and_computes_the_same_updates_bit_for_bit():
    key_p, key_g = jax.random.split(jax.random.key(3))
    params = {"w": jax.random.normal(key_p, (6, 4)), "b": jnp.zeros(4), "s": jnp.float32(0.2)}
    grads = jax.tree.map(lambda p: 0.1 * p + 0.05, params)
    assert lopt.SmallFcLOpt().mup is False
    theta = lopt.SmallFcLOpt().init(jax.random.key(4))
    default = updates_after(lopt.SmallFcLOpt(), theta, params, grads)
    explicit = updates_after(lopt.SmallFcLOpt(mup=False), theta, params, grads)
    for got, want in zip(jax.tree.leaves(explicit), jax.tree.leaves(default)):
        np.testing.assert_array_equal(got, want)


def test_pretrained_optimizer_without_the_option_loads_as_mup_false():
    loaded = lopt.pretrained.load("small_fc_lopt_digits8")
    assert "mup" not in loaded.config and loaded.optimizer.mup is False
    params = {"w": jnp.linspace(-1, 1, 12).reshape(3, 4), "b": jnp.linspace(0, 1, 4)}
    grads = jax.tree.map(lambda p: 0.5 * p - 0.1, params)
    rebuilt = lopt.SmallFcLOpt(**loaded.config, mup=False)
    for got, want in zip(jax.tree.leaves(updates_after(loaded.optimizer, loaded.meta_params, params, grads)),
                         jax.tree.leaves(updates_after(rebuilt, loaded.meta_params, params, grads))):
        np.testing.assert_array_equal(got, want)


def test_mup_option_survives_export_and_bad_values_are_errors(tmp_path):
    optimizer = lopt.SmallFcLOpt(mup=True)
    path = lopt.export.save(tmp_path / "mup.lopt", optimizer, optimizer.init(jax.random.key(0)))
    assert lopt.load(path).optimizer.mup is True
    with pytest.raises(ValueError, match="mup must be True or False"):
        lopt.SmallFcLOpt(mup="yes")
    with pytest.raises(tasks.TaskError, match="mup must be True or False"):
        tasks.get("mlp_image", dataset="digits", mup=1)


def test_mlp_image_mup_divides_only_the_readout_init_by_sqrt_fan_in():
    key = jax.random.key(5)
    plain = tasks.get("mlp_image", dataset="digits", hidden=(16, 24))
    mup = tasks.get("mlp_image", dataset="digits", hidden=(16, 24), mup=True)
    cfg = plain.sample(key)
    plain_params, mup_params = plain.task(cfg).init(key), mup.task(cfg).init(key)
    for layer in ("layer_0", "layer_1"):
        np.testing.assert_array_equal(mup_params[layer]["w"], plain_params[layer]["w"])
    np.testing.assert_allclose(mup_params["layer_2"]["w"], plain_params["layer_2"]["w"] / np.sqrt(24), rtol=1e-6)


def test_multiwidth_config_builds_and_runs_two_meta_steps():
    config = config_lib.load_config(REPO / "configs" / "mup_multiwidth.py")
    assert config.optimizer.kwargs.mup is True
    mt = config.meta_train
    mt.num_tasks, mt.estimator.kwargs.trunc_length, mt.num_steps = 1, 4, 2
    mt.horizon.name, mt.horizon.kwargs.length = "constant", 8
    mt.parallel, mt.host_devices = "none", 0
    config.eval.enabled = False
    run = build_lib.build(config)
    assert run.learned_optimizer.mup is True
    assert sorted(f.hidden for f in run.family) == [(32, 32), (64, 64), (128, 128)]
    assert all(f.mup and f.dataset_name == "digits" for f in run.family)
    state = run.trainer.init(jax.random.key(0))
    for _ in range(2):
        state, metrics = run.trainer.step(state)
    assert int(state.step) == 2
    assert np.isfinite(float(metrics["meta_loss"])) and float(metrics["num_nonfinite"]) == 0
