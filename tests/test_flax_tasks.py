"""tasks.from_flax: a flax.linen model defined here, on scikit-learn digits, becomes a task family that validates,
meta-trains (directly and from a config file), draws its declared variations, and whose exported optimizer
trains the same model in a plain flax TrainState loop."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state
from sklearn.datasets import load_digits

import lopt
import meta_train
import tasks
from meta_train import build as build_lib
from meta_train import config as config_lib


class DigitsMLP(nn.Module):
    """A one-hidden-layer tanh MLP classifying 8x8 digits given as 64 features."""

    hidden: int = 16

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(10)(nn.tanh(nn.Dense(self.hidden)(x)))


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


@pytest.fixture(scope="module")
def family(digits):
    return tasks.from_flax(DigitsMLP(), digits, batch_size=64, init_scale=(0.5, 2.0), label_noise=0.1,
                           subset=0.5, name="digits_flax_mlp")


def test_adapted_family_passes_validate(family):
    report = tasks.validate(family)
    assert report.family == "digits_flax_mlp"
    assert report.param_shapes["['Dense_1']['kernel']"] == (64, 16)
    assert np.all(report.final_loss < report.initial_loss)


def test_meta_trains_and_its_export_trains_the_model_in_a_train_state_loop(family, digits, tmp_path):
    optimizer = lopt.get("small_fc_lopt", hidden_sizes=(8,))
    trainer = meta_train.Trainer(family, optimizer, meta_train.PES(num_tasks=2, trunc_length=5),
                                 meta_train.ConstantHorizon(10))
    state = trainer.init(jax.random.key(0))
    for _ in range(3):
        state, metrics = trainer.step(state)
        assert np.isfinite(float(metrics["meta_loss"]))
    path = lopt.save(tmp_path / "flax_digits.lopt", optimizer, state.meta_params, {})

    model, (x, y) = DigitsMLP(), digits
    params = model.init(jax.random.key(1), x[:1])["params"]
    tx = lopt.load(path).transformation(num_steps=200)
    train = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    def loss_fn(params, x, y):
        logits = train.apply_fn({"params": params}, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(train, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(train.params, x, y)
        return train.apply_gradients(grads=grads), loss

    losses = []
    for step in range(200):
        rows = np.random.default_rng(step).integers(0, len(y), 64)
        train, loss = train_step(train, x[rows], y[rows])
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-20:]) < 0.95 * np.mean(losses[:20])  # a barely meta-trained optimizer: a modest drop


CONFIG = '''
import flax.linen as nn
import numpy as np
from sklearn.datasets import load_digits

import tasks
from meta_train.config import base_config


class ConfigMLP(nn.Module):
    hidden: int = 8

    @nn.compact
    def __call__(self, x):
        return nn.Dense(10)(nn.relu(nn.Dense(self.hidden)(x)))


@tasks.register("test_flax_digits")
def flax_digits(hidden: int = 8, batch_size: int = 32) -> tasks.TaskFamily:
    """Digits classified by ConfigMLP, each task with its own init scale."""
    x, y = load_digits(return_X_y=True)
    return tasks.from_flax(ConfigMLP(hidden), (x / 16.0, y), batch_size=batch_size, init_scale=(0.5, 2.0),
                           name="test_flax_digits")


def get_config():
    config = base_config()
    config.task.family = "test_flax_digits"
    config.task.kwargs.hidden = 8
    config.optimizer.kwargs.hidden_sizes = (8,)
    config.meta_train.num_tasks = 2
    config.meta_train.estimator.kwargs.trunc_length = 5
    config.meta_train.horizon = {"name": "constant", "kwargs": {"length": 10}}
    return config
'''


def test_config_file_registers_a_flax_family_and_meta_trains_a_step(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks.registry, "_FAMILIES", dict(tasks.registry._FAMILIES))
    path = tmp_path / "flax_digits.py"
    path.write_text(CONFIG)
    run = build_lib.build(config_lib.load_config(path))
    assert isinstance(run.family, tasks.FlaxFamily) and run.family.name == "test_flax_digits"
    state, metrics = run.trainer.step(run.trainer.init(jax.random.key(0)))
    assert int(state.step) == 1 and np.isfinite(float(metrics["meta_loss"]))
    with pytest.raises(tasks.TaskError, match="no argument.*width.*valid: hidden, batch_size"):
        tasks.get("test_flax_digits", width=3)


def sampled(family, num_tasks=64):
    return jax.vmap(family.sample)(jax.random.split(jax.random.key(0), num_tasks))


def test_init_scales_differ_lie_in_range_and_multiply_the_model_init(family):
    cfgs = sampled(family)
    scales = np.asarray(cfgs["init_scale"])
    assert np.all((scales >= 0.5) & (scales <= 2.0)) and len(np.unique(scales)) == len(scales)
    key = jax.random.key(3)
    base = DigitsMLP().init({"params": key, "dropout": jax.random.fold_in(key, 1)}, jnp.zeros((1, 64)))["params"]
    params = family.task(jax.tree.map(lambda c: c[0], cfgs)).init(key)
    np.testing.assert_allclose(params["Dense_1"]["kernel"], base["Dense_1"]["kernel"] * scales[0], rtol=1e-6)


def test_label_noise_replaces_train_labels_at_its_rate_once_per_task_and_example(digits):
    x, y = digits
    row_ids = np.arange(len(y))[:, None] * np.ones((1, 64))  # each input names its row of `y`
    noisy_family = tasks.from_flax(DigitsMLP(), (row_ids, y), batch_size=4096, label_noise=0.3)
    task = noisy_family.task(jax.tree.map(lambda c: c[0], sampled(noisy_family, 2)))

    def draw(key, split):
        inputs, labels = task.sample_batch(key, split)
        return np.asarray(inputs[:, 0]).astype(int), np.asarray(labels)

    rows, labels = draw(jax.random.key(1), "train")
    assert abs(np.mean(labels != y[rows]) - 0.3) < 0.03
    label_of = dict(zip(rows, labels))
    more_rows, more_labels = draw(jax.random.key(2), "train")
    assert all(label_of[row] == label for row, label in zip(more_rows, more_labels) if row in label_of)
    valid_rows, valid_labels = draw(jax.random.key(3), "valid")
    np.testing.assert_array_equal(valid_labels, y[valid_rows])


def test_subset_restricts_each_tasks_train_rows(digits):
    x, y = digits
    indexed = tasks.from_flax(DigitsMLP(), (np.arange(len(y))[:, None] * np.ones((1, 64)), y), batch_size=512,
                              subset=0.25)
    cfgs = sampled(indexed, 2)
    subsets = [set(np.asarray(rows).tolist()) for rows in cfgs["subset"]]
    assert all(len(s) == round(0.25 * indexed.x["train"].shape[0]) for s in subsets) and subsets[0] != subsets[1]
    task = indexed.task(jax.tree.map(lambda c: c[0], cfgs))
    train_x = np.asarray(indexed.x["train"][:, 0])
    drawn = np.asarray(task.sample_batch(jax.random.key(5), "train")[0][:, 0])
    allowed = set(train_x[sorted(subsets[0])].tolist())
    assert set(drawn.tolist()) <= allowed


def test_dict_splits_and_mse_loss_are_accepted(digits):
    x, y = digits
    data = {"train": (x[:1000], y[:1000]), "valid": (x[1000:1200], y[1000:1200]), "test": (x[1200:], y[1200:])}
    family = tasks.from_flax(DigitsMLP(), data, batch_size=16)
    assert dict(family.num_examples) == {"train": 1000, "valid": 200, "test": 597}
    regression = tasks.from_flax(nn.Dense(1), (x, y.astype(np.float32)), loss="mse", batch_size=16)
    assert regression.loss_scale == pytest.approx(np.var(np.asarray(regression.y["train"])), rel=1e-4)


@pytest.mark.parametrize("call, message", [
    (lambda x, y: tasks.from_flax(DigitsMLP(), (x, y[:-1])), "x and y must have one row per example"),
    (lambda x, y: tasks.from_flax(DigitsMLP(), (x, y), loss="hinge"), "has no loss 'hinge'"),
    (lambda x, y: tasks.from_flax(nn.Dense(1), (x, y.astype(np.float32)), loss="mse", label_noise=0.1),
     "label_noise needs loss='cross_entropy'"),
    (lambda x, y: tasks.from_flax(DigitsMLP(), {"train": (x, y)}), "needs exactly the keys train, valid, test"),
    (lambda x, y: tasks.from_flax(nn.Dense(3), (x, y)), "more than 9 classes, but the model outputs shape"),
    (lambda x, y: tasks.from_flax(DigitsMLP(), (x, y), loss=lambda out, labels: out), "one value per example"),
    (lambda x, y: tasks.from_flax(DigitsMLP(), (x, y), init_scale=(2.0, 0.5)), "init_scale needs 0 < low <= high"),
])
def test_user_mistakes_are_one_line_task_errors(digits, call, message):
    with pytest.raises(tasks.TaskError, match=message) as error:
        call(*digits)
    assert "\n" not in str(error.value)


def test_registry_takes_factories_that_return_families_and_nothing_else(monkeypatch):
    monkeypatch.setattr(tasks.registry, "_FAMILIES", dict(tasks.registry._FAMILIES))
    tasks.register("test_not_a_family")(lambda: 3)
    with pytest.raises(tasks.TaskError, match="returned int, not a TaskFamily"):
        tasks.get("test_not_a_family")
    with pytest.raises(tasks.TaskError, match="expects a TaskFamily subclass or a function returning one"):
        tasks.register("test_a_class")(dict)


class ListSource:
    """A stand-in for a TFDS data_source: `__len__` and `__getitem__` returning feature dicts."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.x[index], "label": self.y[index]}


def test_data_sources_and_scikit_learn_bunches_are_read_into_arrays(digits):
    x, y = digits
    from_source = tasks.from_flax(DigitsMLP(), ListSource(x, y), batch_size=16)
    from_bunch = tasks.from_flax(DigitsMLP(), load_digits(), batch_size=16)
    for family in (from_source, from_bunch):
        assert dict(family.num_examples) == {"train": 1437, "valid": 179, "test": 179}
    np.testing.assert_array_equal(from_source.y["test"], from_bunch.y["test"])
    with pytest.raises(tasks.TaskError, match="has 1797 examples, more than max_examples=100"):
        tasks.from_flax(DigitsMLP(), ListSource(x, y), max_examples=100)
    with pytest.raises(tasks.TaskError, match=r"no field\(s\) \['img'\].*set source_keys="):
        tasks.from_flax(DigitsMLP(), ListSource(x, y), source_keys=("img", "label"))


def test_reparameterize_wraps_an_adapted_family(family):
    wrapped = tasks.reparameterize(family, levels=("tensor",))
    cfg = wrapped.sample(jax.random.key(0))
    params = wrapped.task(cfg).init(jax.random.key(1))
    assert jax.tree.structure(params) == jax.tree.structure(cfg.scales)
    assert wrapped.name == "reparameterized_digits_flax_mlp"
