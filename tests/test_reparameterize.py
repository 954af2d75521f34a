"""tasks.reparameterize: Celo's task augmentation keeps the function, rescales the dynamics, vmaps and builds from configs."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import tasks
from meta_train import build as build_lib
from meta_train import config as config_lib
from tasks.examples import diabetes_mlp
from tasks.reparameterize import LEVELS, RANGES, ReparameterizedFamily, reparameterize


@pytest.fixture(scope="module")
def digits_family():
    return tasks.get("mlp_image", dataset="digits", hidden=(8,), batch_size=16)


def _one_task(family, key):
    cfg = family.sample(key)
    return cfg, family.task(cfg)


def _close_trees(actual, expected, rtol):
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=rtol * float(np.abs(b).max()))


@pytest.mark.parametrize("level", LEVELS)
def test_loss_and_function_at_own_init_equal_the_base_tasks(digits_family, level):
    family = reparameterize(digits_family, levels=(level,), ranges=("1e-3..1e3",))
    cfg_key, init_key, batch_key, loss_key = jax.random.split(jax.random.key(3), 4)
    cfg, task = _one_task(family, cfg_key)
    base_task = digits_family.task(cfg.base)
    batch = base_task.sample_batch(batch_key, "train")
    params, base_params = task.init(init_key), base_task.init(init_key)
    np.testing.assert_allclose(task.loss(params, loss_key, batch), base_task.loss(base_params, loss_key, batch), rtol=1e-5)
    _close_trees(task.base_params(params), base_params, rtol=1e-6)
    scales = np.concatenate([np.ravel(s) for s in jax.tree.leaves(cfg.scales)])
    assert int(cfg.level) == LEVELS.index(level)
    if level == "none":
        assert np.all(scales == 1.0)
    else:
        assert np.all((scales >= 1e-3) & (scales <= 1e3)) and np.abs(np.log(scales)).max() > 0.1
        w = params["layer_0"]["w"]
        assert not np.allclose(w, base_params["layer_0"]["w"])


@pytest.mark.parametrize("level", ("global", "tensor", "parameter"))
def test_gradients_are_scale_times_base_gradients(digits_family, level):
    family = reparameterize(digits_family, levels=(level,), ranges=("1e-2..1e2",))
    cfg_key, init_key, batch_key = jax.random.split(jax.random.key(5), 3)
    cfg, task = _one_task(family, cfg_key)
    base_task = digits_family.task(cfg.base)
    batch = base_task.sample_batch(batch_key, "train")
    grads = jax.grad(task.loss)(task.init(init_key), init_key, batch)
    base_grads = jax.grad(base_task.loss)(base_task.init(init_key), init_key, batch)
    _close_trees(grads, jax.tree.map(lambda s, g: s * g, cfg.scales, base_grads), rtol=1e-4)


def test_sampled_levels_and_ranges_cover_exactly_the_allowed_choices(digits_family):
    family = reparameterize(digits_family, levels=("global", "parameter"), ranges=("1e-3..1e3", "1e-1..1e1"))
    cfgs = jax.jit(jax.vmap(family.sample))(jax.random.split(jax.random.key(0), 64))
    assert set(np.asarray(cfgs.level).tolist()) == {LEVELS.index("global"), LEVELS.index("parameter")}
    assert set(np.asarray(cfgs.scale_range).tolist()) == {0, 2}
    for i in range(64):
        leaves = [np.asarray(s[i]) for s in jax.tree.leaves(cfgs.scales)]
        largest = list(RANGES.values())[int(cfgs.scale_range[i])]
        assert all(np.all((x >= 1 / largest) & (x <= largest)) for x in leaves)
        distinct = np.unique(np.concatenate([x.ravel() for x in leaves]))
        if int(cfgs.level[i]) == LEVELS.index("global"):
            assert len(distinct) == 1
        else:
            assert len(distinct) > 100


def test_tensor_level_gives_one_scale_per_tensor(digits_family):
    family = reparameterize(digits_family, levels=("tensor",))
    cfg, _ = _one_task(family, jax.random.key(1))
    per_tensor = [np.unique(np.asarray(s)) for s in jax.tree.leaves(cfg.scales)]
    assert all(len(values) == 1 for values in per_tensor)
    assert len({float(values[0]) for values in per_tensor}) == len(per_tensor)


def test_vmapped_tasks_with_different_levels_match_one_at_a_time(digits_family):
    family = reparameterize(digits_family)
    keys = jax.random.split(jax.random.key(2), 6)

    def init_and_loss(fam, key):
        cfg = fam.sample(key)
        task = fam.task(cfg)
        return task.loss(task.init(key), key, task.sample_batch(key, "train"))

    batched = jax.jit(jax.vmap(init_and_loss, in_axes=(None, 0)))(family, keys)
    one_at_a_time = [init_and_loss(family, key) for key in keys]
    np.testing.assert_allclose(batched, one_at_a_time, rtol=1e-5)


def test_family_is_a_pytree_whose_data_stays_leaves(digits_family):
    family = reparameterize(digits_family, levels=("global",))
    leaves, treedef = jax.tree.flatten(family)
    assert len(leaves) == len(jax.tree.leaves(digits_family)) > 0
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert isinstance(rebuilt, ReparameterizedFamily) and rebuilt.levels == ("global",)
    assert rebuilt.name == "reparameterized_mlp_image"
    task = rebuilt.task(rebuilt.sample(jax.random.key(0)))
    assert task.normalizer(jnp.log(10.0)) == pytest.approx(1.0)


def test_wrapped_user_family_passes_validate():
    family = reparameterize(tasks.get("diabetes_mlp", hidden=8))
    assert isinstance(family.base, diabetes_mlp.DiabetesMLPFamily)
    report = tasks.validate(family, num_tasks=4, seed=1)
    assert np.all(report.final_loss < report.initial_loss)


def test_guide_snippet_wraps_the_example_family_and_validates():
    guide = (Path(__file__).resolve().parents[1] / "docs" / "adding_a_task_family.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", guide, flags=re.S) if "tasks.reparameterize(" in b)
    namespace = {}
    exec(compile(snippet, "guide-reparameterize-snippet", "exec"), namespace)
    assert namespace["family"].levels == ("global",) and namespace["family"].base.name == "diabetes_mlp"


@pytest.mark.parametrize(
    "levels, ranges, message",
    [(("globl",), ("1e-3..1e3",), "levels must be a non-empty subset"),
     (("global",), ("1e-4..1e4",), "ranges must be a non-empty subset"),
     ((), ("1e-3..1e3",), "levels must be a non-empty subset"),
     ("global", ("1e-3..1e3",), "must be lists of names"),
     (("global", "global"), ("1e-3..1e3",), "must not repeat")],
)
def test_bad_choices_are_one_line_task_errors(digits_family, levels, ranges, message):
    with pytest.raises(tasks.TaskError, match=message) as error:
        reparameterize(digits_family, levels=levels, ranges=ranges)
    assert "\n" not in str(error.value)


def _write_config(tmp_path, body: str):
    path = tmp_path / "config.py"
    path.write_text("import ml_collections\nfrom meta_train.config import base_config\n\n"
                    "def get_config():\n    config = base_config()\n" + body + "    return config\n")
    return config_lib.load_config(path)


def test_config_file_selects_reparameterisation_and_meta_trains(tmp_path):
    config = _write_config(tmp_path, (
        "    config.task.kwargs = ml_collections.ConfigDict({'dataset': 'digits', 'hidden': (8,), 'batch_size': 16})\n"
        "    config.task.reparameterize.levels = ('global', 'tensor')\n"
        "    config.task.reparameterize.ranges = ('1e-1..1e1',)\n"))
    config.optimizer.name = "adam"
    mt = config.meta_train
    mt.num_tasks, mt.estimator.kwargs.trunc_length, mt.horizon.kwargs.length, mt.num_steps = 2, 5, 10, 1
    config.eval.enabled = False
    run = build_lib.build(config)
    assert isinstance(run.family, ReparameterizedFamily)
    assert (run.family.levels, run.family.ranges) == (("global", "tensor"), ("1e-1..1e1",))
    state, metrics = run.trainer.step(run.trainer.init(jax.random.key(0)))
    assert int(state.step) == 1 and np.isfinite(float(metrics["meta_loss"]))
    config.task.reparameterize.levels = ()
    assert isinstance(build_lib.build_family(config), tasks.MLPImageFamily)


def test_config_reparameterises_every_mixture_entry_unless_it_sets_its_own(tmp_path):
    config = _write_config(tmp_path, (
        "    config.task.mixture = ml_collections.ConfigDict({\n"
        "        'a': {'family': 'quadratic', 'kwargs': {'dim': 4}},\n"
        "        'b': {'family': 'diabetes_mlp', 'kwargs': {'hidden': 4},\n"
        "              'reparameterize': {'levels': ('parameter',)}}})\n"
        "    config.task.reparameterize.levels = ('global',)\n"))
    families = build_lib.build_family(config)
    assert [type(f.base).__name__ for f in families] == ["QuadraticFamily", "DiabetesMLPFamily"]
    assert [f.levels for f in families] == [("global",), ("parameter",)]
    assert families[1].ranges == tuple(RANGES)


@pytest.mark.parametrize(
    "override, message",
    [(("task.reparameterize.levels", "('global', 'per_layer')"), "config.task.reparameterize: reparameterize levels"),
     (("task.reparameterize.ranges", "('1e-3..1e3', '0..1')"), "config.task.reparameterize: reparameterize ranges")],
)
def test_bad_config_names_are_one_line_config_errors(override, message):
    config = config_lib.base_config()
    config_lib.apply_override(config, "task.reparameterize.levels", "('global',)")
    config_lib.apply_override(config, *override)
    with pytest.raises(config_lib.ConfigError, match=message) as error:
        config_lib.validate(config)
    assert "\n" not in str(error.value)


def test_unknown_key_in_reparameterize_group_is_a_config_error():
    config = config_lib.base_config()
    with pytest.raises(config_lib.ConfigError, match="did you mean 'levels'"):
        config_lib.apply_override(config, "task.reparameterize.level", "('global',)")
    with config.task.unlocked():
        config.task.reparameterize = ml_collections.ConfigDict({"levels": ("global",), "scale": 2.0})
    with pytest.raises(config_lib.ConfigError, match="unknown config key config.task.reparameterize.scale"):
        config_lib.validate(config)
