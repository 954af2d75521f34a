"""Tiny `lopt-meta-train` runs for the robustness tests: a config file, the command, and bit-for-bit comparison."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import jax
import numpy as np

import lopt

REPO = Path(__file__).resolve().parents[1]
# The child takes SIGINT as a terminal's foreground job does: a test session started as a background job
# (`cmd &` in a script) passes on an ignored SIGINT, which lopt-meta-train rightly leaves ignored.
RUNNER = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "from meta_train.cli import meta_train_main; sys.exit(meta_train_main())")
VOLATILE_METRICS = ("time", "inner_steps_per_s")

TINY_CONFIG = textwrap.dedent(
    """
    from meta_train.config import base_config

    def get_config():
        config = base_config()
        config.task.family = "quadratic"
        config.task.kwargs.dim = 8
        config.optimizer.name = "small_fc_lopt"
        config.optimizer.kwargs.hidden_sizes = (8,)
        config.optimizer.kwargs.step_mult = 0.01
        config.meta_train.num_tasks = 4
        config.meta_train.estimator.kwargs.trunc_length = 5
        config.meta_train.horizon.kwargs.length = 20
        config.meta_train.num_steps = 6
        config.checkpoint.every = 2
        config.checkpoint.keep = 3
        config.log_every = 1
        config.eval.enabled = False
        return config
    """
)


def write_tiny_config(folder: Path) -> Path:
    """Writes the tiny config file into `folder` and returns its path."""
    path = folder / "tiny.py"
    path.write_text(TINY_CONFIG)
    return path


def command(config: Path, workdir: Path, *overrides: str) -> List[str]:
    """Returns the argv that runs `lopt-meta-train` on `config` in `workdir` in a fresh Python process."""
    return [sys.executable, "-c", RUNNER, "--config", str(config), "--workdir", str(workdir), "--no-progress",
            *overrides]


def start_two_processes(config: Path, workdir: Path, *overrides: str) -> List[subprocess.Popen]:
    """Starts `lopt-meta-train` as two JAX processes on this host (one CPU device each), sharding the tasks."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return [
        subprocess.Popen(
            command(config, workdir, "--config.distributed.enabled=True",
                    f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                    "--config.distributed.num_processes=2", f"--config.distributed.process_id={index}",
                    "--config.meta_train.parallel=shard_map", *overrides),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        for index in range(2)
    ]


def metrics_lines(workdir: Path) -> list:
    """Returns the workdir's metrics lines without the fields that depend on timing."""
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in VOLATILE_METRICS} for line in lines]


def assert_same_run(reference: Path, other: Path) -> None:
    """Asserts that two finished workdirs exported bit-identical meta-params and logged identical metrics."""
    a = lopt.export.read(reference / "optimizer.lopt").meta_params
    b = lopt.export.read(other / "optimizer.lopt").meta_params
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    assert metrics_lines(reference) == metrics_lines(other)
