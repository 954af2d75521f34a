"""scripts/bench_quality.py end to end with a half-minute budget on digits, and the run loop's time budget.

Resuming is tested piecewise: the time budget here, evaluation units in test_evaluation.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lopt
from meta_train import config as config_lib
from meta_train import run
from meta_train.checkpoint import Checkpointer

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def bench(argv, cwd):
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip(),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bench_quality.py"), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_half_minute_benchmark_on_digits_writes_json_and_summary(tmp_path):
    if not (DATA / "mnist").is_dir():
        pytest.skip(f"real-data folder {DATA} not present")
    out = tmp_path / "quality.json"
    argv = ["--minutes", "0.5", "--workdir", str(tmp_path / "work"), "--data-dir", str(DATA), "--out", str(out),
            "--dataset", "digits", "--ood-dataset", "mnist", "--hidden", "16", "--horizon-min", "20",
            "--horizon-max", "40", "--trunc-length", "10", "--num-tasks", "4", "--eval-tasks", "2", "--seeds", "0",
            "--learning-rates", "1e-2", "1e-1", "--fraction-features", "--time-scales", "1", "10", "100",
            "--no-progress"]
    bench(argv, tmp_path)
    result = json.loads(out.read_text())
    training = result["training"]
    assert training["meta_steps"] > 0 and training["stopped_early"]
    assert training["train_seconds"] > 0  # stopped_early: the half-minute budget, not the step count, ended it
    assert set(result["targets"]) == {"in_distribution", "ood_4x_wider", "ood_2x_deeper", "ood_5x_horizon", "ood_mnist"}
    assert result["evaluation"]["settings"]["ood_5x_horizon"]["meta_trained"]["speedup"]["runs"] == 2
    assert result["targets"]["in_distribution"]["adam_cosine_median"] >= 0
    assert "adam_cosine (tuned lr)" in result["evaluation"]["settings"]["ood_mnist"]
    shipped = lopt.export.load(tmp_path / "work" / "meta_trained.lopt").optimizer
    assert shipped.fraction_features and shipped.time_scales == (1.0, 10.0, 100.0)
    summary = out.with_suffix(".md").read_text()
    assert "python scripts/bench_quality.py --minutes 0.5" in summary and "| in_distribution |" in summary
    loaded = json.loads((tmp_path / "work" / "meta_train" / "train_seconds.json").read_text())
    assert loaded["step"] == training["meta_steps"]


def test_time_budget_stops_checkpoints_and_exports_then_resumes(tmp_path):
    config = config_lib.base_config()
    config.task.family = "quadratic"
    config.task.kwargs.dim = 4
    config.optimizer.kwargs = {"hidden_sizes": (4,), "step_mult": 0.01}
    config.meta_train.num_tasks, config.meta_train.estimator.kwargs.trunc_length = 2, 5
    config.meta_train.horizon.kwargs.length, config.meta_train.num_steps = 10, 10**6
    config.checkpoint.every = 10**6
    config.eval.enabled = False
    workdir = tmp_path / "run"
    began = time.perf_counter()
    nothing = run.meta_train(config, workdir, show_progress=False, max_seconds=0.0)
    setup = time.perf_counter() - began
    assert nothing["meta_steps"] == 0 and nothing["stopped_early"]
    budget = 3 * setup + 1.0
    first = run.meta_train(config, workdir, show_progress=False, max_seconds=budget)
    assert first["stopped_early"] and first["meta_steps"] >= 1 and first["train_seconds"] >= budget
    assert Checkpointer(workdir / "checkpoints").latest_step() == first["meta_steps"]
    assert lopt.load(workdir / "optimizer.lopt").provenance["meta_steps"] == first["meta_steps"]
    again = run.meta_train(config, workdir, show_progress=False, max_seconds=budget)
    assert again["meta_steps"] == first["meta_steps"] and again["meta_params_sha256"] == first["meta_params_sha256"]
    assert again["train_seconds"] == pytest.approx(first["train_seconds"])


def test_schedule_ceiling_compares_cosine_budgets_with_tuned_adam(tmp_path):
    out = tmp_path / "ceiling.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench_schedule_ceiling.py"), "--dataset", "digits", "--hidden",
         "16", "--steps", "60", "--fractions", "1", "0.1", "--num-tasks", "2", "--seeds", "0", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    full, tenth = result["adam_cosine"]
    assert (full["steps"], tenth["steps"]) == (60, 6)
    assert full["final_train_loss"] < tenth["final_train_loss"]  # tuned, 10x the steps must train further
    assert full["reached"] == (full["final_train_loss"] <= result["reference"]["final_train_loss"])
    assert "largest budget ratio" in done.stdout
    bad = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "bench_schedule_ceiling.py"), "--fractions", "2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--fractions must lie in (0, 1]" in bad.stderr
