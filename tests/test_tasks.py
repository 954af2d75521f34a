"""Tests for the tasks package: families under jit/vmap, training signal, data loaders, registry."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from tasks.datasets import load_dataset, resize_images
from tasks.mlp_image import ACTIVATIONS, apply_activation

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_FAMILIES = [(name, {}) for name in tasks.registered_names()]
SYNTHETIC_LOGISTIC = (
    "logistic_regression", {"dataset": "synthetic", "dim": 8, "batch_size": 128, "max_label_noise": 0.05}
)
JIT_VARIANTS = DEFAULT_FAMILIES + [SYNTHETIC_LOGISTIC, ("mlp_image", {"hidden": (16,), "activations": ("tanh", "elu")})]
TRAIN_VARIANTS = DEFAULT_FAMILIES + [SYNTHETIC_LOGISTIC, ("quadratic", {"dim": 6, "grad_noise": 0.1})]


def variant_ids(variants):
    return [f"{name}-{'-'.join(map(str, kwargs.values())) or 'default'}" for name, kwargs in variants]


def needs_shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        reason = f"real-data tests skipped: no shared data folder at {SHARED_DATA}"
        print(reason)
        pytest.skip(reason)
    return SHARED_DATA


def init_and_loss(family: tasks.TaskFamily, cfg, key):
    task = family.task(cfg)
    init_key, batch_key, loss_key = jax.random.split(key, 3)
    params = task.init(init_key)
    loss = task.loss(params, loss_key, task.sample_batch(batch_key, "train"))
    return params, loss, task.normalizer(loss)


def test_registered_names():
    assert {"quadratic", "logistic_regression", "mlp_image"} <= set(tasks.registered_names())


@pytest.mark.parametrize("name,kwargs", JIT_VARIANTS, ids=variant_ids(JIT_VARIANTS))
def test_family_jit_vmap_static_shapes_and_scale(name, kwargs):
    family = tasks.get(name, **kwargs)
    keys = jax.random.split(jax.random.key(0), 4)

    @jax.jit
    def sample_init_and_loss(fam, task_keys):
        cfgs = jax.vmap(fam.sample)(task_keys)
        return (cfgs,) + jax.vmap(init_and_loss, in_axes=(None, 0, 0))(fam, cfgs, task_keys)

    cfgs, params, losses, normalized = sample_init_and_loss(family, keys)

    single_cfgs = [jax.tree.map(lambda leaf: leaf[i], cfgs) for i in range(2)]
    shapes = [jax.eval_shape(lambda c: family.task(c).init(keys[0]), c) for c in single_cfgs]
    assert shapes[0] == shapes[1]
    for leaf, spec in zip(jax.tree.leaves(params), jax.tree.leaves(shapes[0])):
        assert leaf.shape == (4,) + spec.shape and leaf.dtype == jnp.float32
    assert losses.shape == (4,) and losses.dtype == jnp.float32
    assert np.all(np.isfinite(losses))
    assert 0.3 < float(jnp.mean(normalized)) < 3.0, normalized
    assert np.all((normalized > 0.02) & (normalized < 20.0)), normalized


@pytest.mark.parametrize("name,kwargs", TRAIN_VARIANTS, ids=variant_ids(TRAIN_VARIANTS))
def test_adam_lowers_loss_on_fixed_task(name, kwargs):
    family = tasks.get(name, **kwargs)
    task = family.task(family.sample(jax.random.key(1)))
    optimizer = optax.adam(0.03)

    def step(carry, step_key):
        params, opt_state = carry
        batch_key, loss_key = jax.random.split(step_key)
        loss, grads = jax.value_and_grad(task.loss)(params, loss_key, task.sample_batch(batch_key, "train"))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def train_losses(init_key):
        params = task.init(init_key)
        _, losses = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(init_key, 60))
        return losses

    losses = np.asarray(train_losses(jax.random.key(3)))
    assert losses.dtype == np.float32 and np.all(np.isfinite(losses))
    assert losses[-10:].mean() < 0.9 * losses[:5].mean(), losses


@pytest.mark.parametrize("name", ["quadratic", "logistic_regression", "mlp_image"])
def test_family_passes_through_jit_as_argument(name):
    family = tasks.get(name)
    key = jax.random.key(4)
    init = jax.jit(lambda fam, k: fam.task(fam.sample(k)).init(k))
    params = init(family, key)
    assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))
    closed = jax.make_jaxpr(lambda fam, k: fam.task(fam.sample(k)).init(k))(family, key)
    assert len(closed.jaxpr.invars) == len(jax.tree.leaves(family)) + 1
    assert all(np.size(const) < 1000 for const in closed.consts), "family arrays were baked in as constants"
    compiled = init.lower(family, key).compile()  # ahead of time: JAX unflattens the family with placeholder leaves
    np.testing.assert_array_equal(np.asarray(jax.tree.leaves(compiled(family, key))[0]),
                                  np.asarray(jax.tree.leaves(params)[0]))


class TableFamily(tasks.TaskFamily):
    """A minimal family with two declared data fields and two static ones, for the pytree tests."""

    data_fields = ("table", "offsets")

    def __init__(self, rows: int = 5, scale: float = 2.0):
        self.rows, self.scale = rows, scale
        self.table = {"a": jnp.arange(rows, dtype=jnp.float32), "b": jnp.ones((rows, 2))}
        self.offsets = jnp.zeros(3)

    def sample(self, key):
        return {"row": jax.random.randint(key, (), 0, self.rows)}

    def task(self, cfg):
        return tasks.Task()


def table_value(family: TableFamily, key: jax.Array) -> jax.Array:
    return family.scale * family.table["a"][family.sample(key)["row"]] + family.offsets.sum()


def test_declared_data_fields_are_the_leaves_in_declared_order():
    family = TableFamily()
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(family)[0]]
    assert paths == [".table['a']", ".table['b']", ".offsets"]
    rebuilt = jax.tree.unflatten(jax.tree.structure(family), jax.tree.leaves(family))
    assert isinstance(rebuilt, TableFamily) and (rebuilt.rows, rebuilt.scale) == (5, 2.0)
    image = tasks.get("mlp_image", hidden=(4,))
    assert {jax.tree_util.keystr(p).split("[")[0] for p, _ in jax.tree_util.tree_flatten_with_path(image)[0]} == {
        ".data.x", ".data.y"
    }


def test_family_lowers_ahead_of_time_with_placeholder_leaves():
    family, key = TableFamily(), jax.random.key(0)
    placeholders = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), family)
    assert isinstance(placeholders, TableFamily) and placeholders.rows == 5
    compiled = jax.jit(table_value).lower(placeholders, key).compile()
    assert float(compiled(family, key)) == pytest.approx(float(table_value(family, key)))


def test_family_rebuilt_with_the_same_settings_reuses_the_compiled_program():
    traces = []

    @jax.jit
    def value(family, key):
        traces.append(type(family).__name__)
        return table_value(family, key)

    key = jax.random.key(1)
    value(TableFamily(), key)
    value(TableFamily(), key)
    assert len(traces) == 1
    value(TableFamily(scale=3.0), key)
    assert len(traces) == 2, "a different static field must retrace"
    value(TableFamily(scale=3), key)
    assert len(traces) == 3, "static fields compare by type too: 3 and 3.0 differ"


def test_undeclared_array_attribute_and_missing_data_field_are_one_line_errors():
    family = TableFamily()
    family.cache = {"weights": jnp.ones(2)}
    with pytest.raises(TypeError, match=r"TableFamily\.cache holds arrays but is not declared as data") as error:
        jax.tree.leaves(family)
    assert "\n" not in str(error.value) and "data_fields" in str(error.value)
    incomplete = TableFamily()
    del incomplete.offsets
    with pytest.raises(TypeError, match=r"declares data_fields \['offsets'\] but its instance never sets them"):
        jax.jit(table_value)(incomplete, jax.random.key(0))
    with pytest.raises(TypeError, match="tuple of attribute names"):
        type("BadDeclaration", (tasks.TaskFamily,), {"data_fields": "table"})
    with pytest.raises(tasks.TaskError, match=r"check 'pytree' failed: TypeError: TableFamily\.cache holds arrays"):
        tasks.validate(family)


def test_activation_switch_differs_across_indices():
    x = jnp.linspace(-3.0, 3.0, 41)
    outputs = jax.jit(jax.vmap(apply_activation, in_axes=(0, None)))(jnp.arange(len(ACTIVATIONS)), x)
    for i in range(len(ACTIVATIONS)):
        for j in range(i + 1, len(ACTIVATIONS)):
            assert not np.allclose(outputs[i], outputs[j]), (i, j)
    np.testing.assert_allclose(outputs[0], jax.nn.relu(x))


def test_mlp_activation_changes_loss():
    family = tasks.get("mlp_image", hidden=(16,))
    cfg = family.sample(jax.random.key(5))
    key = jax.random.key(6)

    def loss_with_activation(index):
        task = family.task({**cfg, "activation": index})
        return task.loss(task.init(key), key, task.sample_batch(key, "train"))

    losses = jax.jit(jax.vmap(loss_with_activation))(jnp.arange(len(family.activations), dtype=jnp.int32))
    assert len(set(np.asarray(losses).tolist())) == len(family.activations)


def test_quadratic_normalizer_is_one_on_average_and_zero_at_optimum():
    family = tasks.QuadraticFamily(dim=8)
    keys = jax.random.split(jax.random.key(7), 256)

    def normalized_init_and_optimum(cfg, key):
        task = family.task(cfg)
        loss = task.loss(task.init(key), key, None)
        return task.normalizer(loss), task.normalizer(task.loss({"x": cfg["optimum"]}, key, None))

    at_init, at_optimum = jax.jit(jax.vmap(normalized_init_and_optimum))(jax.vmap(family.sample)(keys), keys)
    assert 0.8 < float(jnp.mean(at_init)) < 1.2
    np.testing.assert_allclose(at_optimum, 0.0, atol=1e-5)
    assert family.task(family.sample(keys[0])).sample_batch(keys[0], "train") is None


def test_digits_loads_without_files(monkeypatch):
    monkeypatch.delenv("LOPT_DATA_DIR", raising=False)
    data = load_dataset("digits")
    assert data.input_shape == (8, 8, 1) and data.num_classes == 10
    assert data.num_train + data.num_valid + data.num_test == 1797
    x, y = jax.jit(lambda d, k: d.sample(k, "valid", 32))(data, jax.random.key(0))
    assert x.shape == (32, 8, 8, 1) and x.dtype == jnp.float32 and y.dtype == jnp.int32
    assert int(y.min()) >= 0 and int(y.max()) <= 9


def test_breast_cancer_is_standardised_with_train_statistics():
    data = load_dataset("breast_cancer")
    x, y = data.full_split("train")
    assert x.shape[1:] == (30,) and set(np.unique(y)) == {0, 1}
    np.testing.assert_allclose(jnp.mean(x, axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(jnp.std(x, axis=0), 1.0, atol=1e-3)


@pytest.mark.parametrize(
    "name,size,channels", [("mnist", 8, 1), ("mnist", 16, 1), ("mnist", 28, 1), ("fashion_mnist", 8, 1),
                           ("cifar10", 8, 3), ("cifar10", 32, 3)]
)
def test_file_datasets_load_with_shapes_and_labels(name, size, channels):
    data = load_dataset(name, size, str(needs_shared_data()))
    assert data.input_shape == (size, size, channels) and data.num_classes == 10
    for split in tasks.SPLITS:
        assert data.x[split].dtype == jnp.uint8
        labels = np.asarray(data.y[split])
        assert labels.min() == 0 and labels.max() == 9
    if name != "cifar10" or size == 8:
        assert data.num_train + data.num_valid == (60000 if "mnist" in name else 50000)
        assert data.num_test == 10000
    x, y = data.sample(jax.random.key(0), "test", 16)
    assert x.shape == (16, size, size, channels) and x.dtype == jnp.float32 and y.shape == (16,)


def test_image_resizing_preserves_average_intensity():
    data_dir = str(needs_shared_data())
    full = np.asarray(load_dataset("mnist", 28, data_dir, max_examples=200).x["test"], np.float64)
    small = np.asarray(load_dataset("mnist", 8, data_dir, max_examples=200).x["test"], np.float64)
    np.testing.assert_allclose(small.mean(axis=(1, 2, 3)), full.mean(axis=(1, 2, 3)), atol=1.0)


def test_resize_images_is_area_average():
    blocks = np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4), np.ones((3, 3), np.uint8))
    resized = resize_images(blocks[None, :, :, None], 4)
    np.testing.assert_array_equal(resized[0, :, :, 0], np.arange(16).reshape(4, 4))
    assert resize_images(np.full((2, 28, 28, 1), 7, np.uint8), 8).tolist() == np.full((2, 8, 8, 1), 7).tolist()


def test_mlp_family_on_mnist_16(monkeypatch):
    monkeypatch.setenv("LOPT_DATA_DIR", str(needs_shared_data()))
    family = tasks.get("mlp_image", dataset="mnist", image_size=16, hidden=(8,))
    _, loss, normalized = jax.jit(init_and_loss)(family, family.sample(jax.random.key(0)), jax.random.key(1))
    assert family.data.input_shape == (16, 16, 1) and np.isfinite(loss) and 0.3 < normalized < 3.0


def assert_one_line_error(error: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def test_missing_data_folder_names_the_path(tmp_path, monkeypatch):
    monkeypatch.delenv("LOPT_DATA_DIR", raising=False)
    missing = tmp_path / "no_such_folder"
    with pytest.raises(tasks.TaskError) as error:
        load_dataset("mnist", 8, str(missing))
    assert_one_line_error(error, str(missing), "data_dir", "LOPT_DATA_DIR")
    with pytest.raises(tasks.TaskError) as error:
        tasks.get("mlp_image", dataset="fashion_mnist")
    assert_one_line_error(error, "LOPT_DATA_DIR")
    (tmp_path / "cifar10").mkdir()
    with pytest.raises(tasks.TaskError) as error:
        load_dataset("cifar10", 8, str(tmp_path))
    assert_one_line_error(error, str(tmp_path / "cifar10" / "cifar10_8x8.npz"))


def test_lopt_data_dir_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("LOPT_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(tasks.TaskError) as error:
        load_dataset("mnist", 8)
    assert_one_line_error(error, str(tmp_path / "elsewhere"))
    monkeypatch.setenv("LOPT_DATA_DIR", str(needs_shared_data()))
    assert load_dataset("fashion_mnist", 8).num_test == 10000


def test_corrupt_idx_files_give_clear_errors(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    images = np.zeros((3, 28, 28), np.uint8)
    header = (2049).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in images.shape)
    for prefix in ("train", "t10k"):
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as handle:
            handle.write(header + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as handle:
            handle.write((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(3))
    with pytest.raises(tasks.TaskError) as error:
        load_dataset("mnist", 8, str(tmp_path))
    assert_one_line_error(error, "magic", "train-images-idx3-ubyte.gz")
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(tasks.TaskError) as error:
        load_dataset("mnist", 8, str(tmp_path))
    assert_one_line_error(error, "gzip", "train-images-idx3-ubyte.gz")


def test_registry_errors_are_one_line():
    with pytest.raises(tasks.TaskError) as error:
        tasks.get("no_such_family")
    assert_one_line_error(error, "quadratic", "mlp_image")
    with pytest.raises(tasks.TaskError) as error:
        tasks.get("quadratic", dimension=3)
    assert_one_line_error(error, "dimension", "dim", "grad_noise")
    with pytest.raises(tasks.TaskError):
        tasks.get("mlp_image", dataset="imagenet")
    assert tasks.accepts_argument("mlp_image", "data_dir") and not tasks.accepts_argument("quadratic", "data_dir")
    assert not tasks.accepts_argument("no_such_family", "dim")


def test_unknown_split_and_single_task_family():
    family = tasks.get("mlp_image", hidden=(4,))
    task = family.task(family.sample(jax.random.key(0)))
    with pytest.raises(tasks.TaskError):
        task.sample_batch(jax.random.key(0), "training")
    wrapped = tasks.single_task_family(task)
    assert wrapped.task(wrapped.sample(jax.random.key(1))) is task


def test_registered_user_family_plugs_in(monkeypatch):
    monkeypatch.setattr(tasks.registry, "_FAMILIES", dict(tasks.registry._FAMILIES))

    @tasks.register("test_constant")
    class ConstantFamily(tasks.TaskFamily):
        def __init__(self, value: float = 1.0):
            self.value = value

        def sample(self, key):
            return {"offset": jax.random.normal(key, ())}

        def task(self, cfg):
            return tasks.Task()

    assert isinstance(tasks.get("test_constant", value=2.0), ConstantFamily)
    assert "test_constant" in tasks.registered_names()
    assert math.isclose(tasks.get("test_constant").value, 1.0)


def test_grey_cifar10_is_the_luminance_of_the_colour_images(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "cifar10").mkdir()
    arrays = {
        "x_train": rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8),
        "y_train": rng.integers(0, 10, (50,)).astype(np.int64),
        "x_test": rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8),
        "y_test": rng.integers(0, 10, (10,)).astype(np.int64),
    }
    np.savez(tmp_path / "cifar10" / "cifar10_8x8.npz", **arrays)
    colour = load_dataset("cifar10", 8, str(tmp_path))
    grey = load_dataset("cifar10_grey", 8, str(tmp_path))
    assert grey.input_shape == (8, 8, 1) and colour.input_shape == (8, 8, 3)
    expected = np.rint(np.asarray(colour.x["test"], np.float64) @ [0.299, 0.587, 0.114])
    np.testing.assert_allclose(np.asarray(grey.x["test"][..., 0], np.float64), expected, atol=1.0)
    family = tasks.get("mlp_image", dataset="cifar10_grey", hidden=(4,), data_dir=str(tmp_path), batch_size=4)
    assert family.layer_sizes == (64, 4, 10)
