"""`tasks.validate` passes every registered family and names the check a broken family fails."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tasks

SMALL_KWARGS = {
    "cnn_image": dict(channels=(4, 8), activations=("relu", "tanh"), batch_size=32),
    "mlp_image": dict(hidden=(16,), activations=("relu", "tanh"), batch_size=32),
    "few_shot": dict(ways=3, shots=2, queries=4, hidden=(16,), activations=("relu", "tanh")),
    "transformer_lm": dict(width=16, depth=1, heads=2, seq_len=16, batch_size=8),
    "finance": dict(max_window=8, min_window=2, hidden=(8,), activations=("relu", "tanh"), batch_size=32),
    "quadratic": dict(dim=6),
}
VALIDATED_ELSEWHERE = {"diabetes_mlp": "tests/test_task_guide.py runs the guide's own validate snippet"}


@pytest.mark.parametrize("name", tasks.registered_names())
def test_every_registered_family_validates(name):
    if name in VALIDATED_ELSEWHERE:
        pytest.skip(VALIDATED_ELSEWHERE[name])
    family = tasks.get(name, **SMALL_KWARGS.get(name, {}))
    report = tasks.validate(family, steps=20)
    assert report.family == name and report.param_shapes
    assert np.all(report.final_loss < report.initial_loss)
    assert set(report.batch_shapes) == set(tasks.SPLITS)


class BrokenTask(tasks.Task):
    """A linear model whose defects are switched on by the family's `defect` string."""

    def __init__(self, family: "BrokenFamily", cfg):
        self.family, self.cfg = family, cfg

    def init(self, key):
        return {"w": jax.random.normal(key, (3,)) * self.cfg.get("scale", 1.0)}

    def sample_batch(self, key, split):
        return jax.random.normal(key, (8, 3))

    def loss(self, params, key, batch):
        value = jnp.mean(jnp.square(batch @ params["w"] - 1.0))
        if self.family.defect == "nan":
            value = value * jnp.nan
        if self.family.defect == "flat":
            value = jnp.float32(1.0) + 0.0 * jnp.sum(params["w"])
        if self.family.defect == "int":
            return value.astype(jnp.int32)
        return value.astype(jnp.float32)


class BrokenFamily(tasks.TaskFamily):
    """A family with one deliberate defect, for checking validate's error messages."""

    name = "broken"

    def __init__(self, defect: str):
        self.defect = defect

    def sample(self, key):
        if self.defect == "empty":
            return {}
        return {"scale": jax.random.uniform(key, (), minval=0.5, maxval=1.0)}

    def task(self, cfg):
        return BrokenTask(self, cfg)


@pytest.mark.parametrize(
    "defect,check", [("nan", "finite_loss"), ("flat", "gradients"), ("int", "finite_loss"), ("empty", "sample")]
)
def test_broken_families_fail_the_named_check_in_one_line(defect, check):
    with pytest.raises(tasks.TaskError) as error:
        tasks.validate(BrokenFamily(defect), steps=4)
    message = str(error.value)
    assert "\n" not in message and f"check {check!r}" in message and "validate(broken)" in message, message


def test_python_branching_on_the_config_fails_static_shapes(monkeypatch):
    monkeypatch.setattr(BrokenTask, "init", lambda self, key: {"w": jnp.zeros((4 if self.cfg["scale"] > 0.7 else 3,))})
    with pytest.raises(tasks.TaskError) as error:
        tasks.validate(BrokenFamily("none"), steps=4)
    assert "check 'static_shapes'" in str(error.value) and "\n" not in str(error.value)


def test_splits_may_differ_in_batch_size(monkeypatch):
    monkeypatch.setattr(BrokenTask, "sample_batch", lambda self, key, split: jnp.ones((8 + (split == "test"), 3)))
    report = tasks.validate(BrokenFamily("none"), steps=10)
    assert report.batch_shapes["train"] == ((8, 3), "float32") and report.batch_shapes["test"] == ((9, 3), "float32")


def test_a_loss_that_adam_cannot_lower_fails_adam_decrease(monkeypatch):
    monkeypatch.setattr(BrokenTask, "loss", lambda self, params, key, batch: jnp.sum(jnp.sin(1e4 * params["w"])) + 5.0)
    with pytest.raises(tasks.TaskError) as error:
        tasks.validate(BrokenFamily("none"), steps=8, learning_rates=(1e-8,))
    assert "check 'adam_decrease'" in str(error.value) and "\n" not in str(error.value)
