"""Crashes, interrupted checkpoint writes, damaged checkpoints and diverging tasks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
import meta_train
from meta_train.checkpoint import CheckpointError, Checkpointer
from tasks.base import Task, TaskFamily
from tests.helpers import FixedQuadraticFamily

REPO = Path(__file__).resolve().parents[1]


def test_sigkill_sigterm_and_a_damaged_checkpoint_then_resume_is_bit_identical(tmp_path):
    out = tmp_path / "chaos.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chaos_resume.py"), "--kills", "3", "--terms", "1",
         "--corruptions", "1", "--num-steps", "30", "--workdir", str(tmp_path / "chaos"), "--out", str(out),
         "--seed", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["kills"] == 3 and report["graceful_terms"] >= 1 and report["corruptions_recovered"] == 1
    assert report["failures"] == []
    assert report["identical_meta_params"] and report["identical_metrics"]


def small_trainer():
    return meta_train.Trainer(
        FixedQuadraticFamily(), lopt.SmallFcLOpt(hidden_sizes=(4,)), meta_train.PES(num_tasks=2, trunc_length=5, std=0.01),
        meta_train.ConstantHorizon(10), optax.adam(1e-3),
    )


def test_interrupted_checkpoint_write_is_never_restored(tmp_path):
    trainer = small_trainer()
    state = trainer.init(jax.random.key(0))
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(1, state)
    later, _ = trainer.step(state)
    checkpointer.save(2, later)
    checkpointer.close()
    # What a crash mid-write leaves behind: a temporary folder for a newer step, half written.
    partial = tmp_path / "ckpt" / "3.orbax-checkpoint-tmp-1234567"
    shutil.copytree(tmp_path / "ckpt" / "2", partial)
    for path in partial.rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    reopened = Checkpointer(tmp_path / "ckpt")
    assert reopened.latest_step() == 2
    restored = reopened.restore(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(later)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_damaged_checkpoint_is_a_one_line_error(tmp_path):
    trainer = small_trainer()
    state = trainer.init(jax.random.key(0))
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(1, state)
    checkpointer.close()
    for path in (tmp_path / "ckpt" / "1").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"\x00garbage" * 3)
    with pytest.raises(CheckpointError) as info:
        Checkpointer(tmp_path / "ckpt").restore(state)
    assert "\n" not in str(info.value) and "checkpoint 1" in str(info.value)


class ExplodingTask(Task):
    """A quadratic whose loss becomes NaN once any coordinate leaves [-3, 3]; steep enough to diverge under large steps."""

    def __init__(self, curvature):
        self.curvature = curvature

    def init(self, key):
        return {"x": jax.random.normal(key, (6,))}

    def loss(self, params, key, batch):
        x = params["x"]
        value = 0.5 * self.curvature * jnp.sum(x**2)
        return jnp.where(jnp.all(jnp.abs(x) < 3.0), value, jnp.nan)

    def normalizer(self, loss):
        return loss / (3.0 * self.curvature)


class PartlyExplodingFamily(TaskFamily):
    """Half of the tasks are gentle (curvature 1), half so steep (1e4) that SGD at lr 0.1 blows up."""

    name = "partly_exploding"

    def sample(self, key):
        return {"curvature": jnp.where(jax.random.bernoulli(key), 1e4, 1.0)}

    def task(self, cfg):
        return ExplodingTask(cfg["curvature"])


def test_diverging_tasks_are_reset_counted_and_do_not_poison_the_meta_gradient():
    trainer = meta_train.Trainer(
        PartlyExplodingFamily(), lopt.get("sgd", learning_rate=0.1),
        meta_train.PES(num_tasks=16, trunc_length=10, std=0.01), meta_train.ConstantHorizon(40), optax.adam(0.01),
    )
    state = trainer.init(jax.random.key(0))
    total_nonfinite, total_restarts = 0, 0
    for _ in range(5):
        state, metrics = trainer.step(state)
        assert np.isfinite(float(metrics["meta_grad_norm"]))
        assert int(metrics["skipped_update"]) == 0
        assert np.isfinite(float(metrics["meta_loss"]))
        total_nonfinite += int(metrics["num_nonfinite"])
        total_restarts += int(metrics["num_restarts"])
    assert total_nonfinite > 0
    assert total_restarts >= total_nonfinite // 2
    for leaf in jax.tree.leaves(state.estimator_state.tasks.params):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert np.all(np.isfinite(np.asarray(state.meta_params["log_learning_rate"])))


def test_same_seed_gives_identical_metrics_and_meta_params():
    def run():
        trainer = small_trainer()
        state = trainer.init(jax.random.key(3))
        history = []
        for _ in range(4):
            state, metrics = trainer.step(state)
            history.append({k: float(v) for k, v in metrics.items()})
        return history, jax.device_get(state.meta_params)

    first, second = run(), run()
    assert first[0] == second[0]
    for a, b in zip(jax.tree.leaves(first[1]), jax.tree.leaves(second[1])):
        np.testing.assert_array_equal(a, b)
