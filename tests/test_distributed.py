"""Meta-training across devices (shard_map, pmap) and across processes agrees with one device."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import lopt
from tests.workdir_runs import REPO, command, write_tiny_config

DEVICE_COMPARISON = textwrap.dedent(
    """
    import os, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np, optax, lopt, meta_train, tasks
    from meta_train.parallel import TaskParallelism

    family = tasks.get("mlp_image", dataset="digits", hidden=(16,))
    out = {"devices": jax.device_count()}
    for mode, count in [("none", None), ("shard_map", 8), ("pmap", 8), ("shard_map", 2)]:
        trainer = meta_train.Trainer(
            family, lopt.SmallFcLOpt(hidden_sizes=(8,)), meta_train.PES(num_tasks=8, trunc_length=5, std=0.01),
            meta_train.ConstantHorizon(20), optax.adam(1e-3), parallelism=TaskParallelism(mode, count))
        state = trainer.init(jax.random.key(0))
        unroll = trainer.unroll(trainer.family)
        gradient, _, _ = jax.jit(lambda s, k: trainer.estimator.estimate(unroll, s.meta_params, s.estimator_state, k))(
            state, jax.random.key(5))
        for _ in range(3):
            state, metrics = trainer.step(state)
        out[f"{mode}{count}"] = {
            "gradient": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(gradient)],
            "meta_params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(state.meta_params)],
            "meta_loss": float(metrics["meta_loss"]),
            "sharded_over": len(state.estimator_state.accumulator["w0"].sharding.device_set),
        }
    print(json.dumps(out))
    """
)


def flat(lists):
    return np.concatenate([np.asarray(x) for x in lists])


def test_eight_devices_give_the_meta_gradient_of_one():
    result = subprocess.run([sys.executable, "-c", DEVICE_COMPARISON], capture_output=True, text=True, timeout=600,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    single = out["noneNone"]
    assert single["sharded_over"] == 1
    for name in ("shard_map8", "pmap8", "shard_map2"):
        other = out[name]
        assert other["sharded_over"] == int(name[-1])
        np.testing.assert_allclose(flat(other["gradient"]), flat(single["gradient"]), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(flat(other["meta_params"]), flat(single["meta_params"]), rtol=1e-5, atol=1e-6)
        assert abs(other["meta_loss"] - single["meta_loss"]) < 1e-5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(config: Path, workdir: Path, num_steps: int):
    port = free_port()
    env = {**__import__("os").environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    processes = [
        subprocess.Popen(
            command(config, workdir, "--config.distributed.enabled=True",
                    f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                    "--config.distributed.num_processes=2", f"--config.distributed.process_id={index}",
                    "--config.meta_train.parallel=shard_map", f"--config.meta_train.num_steps={num_steps}"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        for index in range(2)
    ]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        outputs.append(out + err)
    return outputs


def digest(output: str) -> str:
    return re.search(r"meta-params sha256 ([0-9a-f]{64})", output).group(1)


def test_two_processes_meta_train_together_and_resume_from_one_writer(tmp_path):
    config = write_tiny_config(tmp_path)
    single = tmp_path / "single"
    subprocess.run(command(config, single, "--config.meta_train.num_steps=6"), check=True, capture_output=True,
                   cwd=REPO, timeout=600)

    workdir = tmp_path / "two_processes"
    first = launch_two_processes(config, workdir, num_steps=4)
    assert digest(first[0]) == digest(first[1])
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]

    second = launch_two_processes(config, workdir, num_steps=6)
    for index, output in enumerate(second):
        assert f"process {index}: resumed from checkpoint at meta-step 4" in output
    assert digest(second[0]) == digest(second[1])
    together = lopt.export.read(workdir / "optimizer.lopt").meta_params
    alone = lopt.export.read(single / "optimizer.lopt").meta_params
    import jax

    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(alone)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_importing_the_packages_does_not_start_jax_backends():
    """jax.distributed.initialize must run before any backend starts, so imports must not start one."""
    code = (
        "import jax._src.xla_bridge as xb, lopt, tasks, meta_train, meta_train.cli, meta_train.run, meta_train.config;"
        "print(bool(xb._backends))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_force_host_devices_splits_the_cpu_and_refuses_once_the_backend_runs():
    code = textwrap.dedent(
        """
        import os, jax
        from meta_train.parallel import force_host_devices
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        force_host_devices(3)
        print(jax.device_count(), os.environ["XLA_FLAGS"].count("device_count"),
              "--xla_cpu_multi_thread_eigen=false" in os.environ["XLA_FLAGS"])
        try:
            force_host_devices(4)
        except RuntimeError as err:
            print("refused:", err)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "3 1 True"
    assert lines[1].startswith("refused: JAX's CPU backend already started with 3 device(s)")


def test_host_device_count_is_one_per_core_dividing_the_tasks():
    from meta_train.parallel import host_device_count

    assert host_device_count(-1, num_tasks=8, cores=2) == 2
    assert host_device_count(-1, num_tasks=8, cores=6) == 4
    assert host_device_count(-1, num_tasks=6, cores=4) == 3
    assert host_device_count(-1, num_tasks=7, cores=2) == 1
    assert host_device_count(3, num_tasks=8, cores=2) == 3


def test_config_host_devices_splits_the_cpu_before_jax_starts():
    """A run's `meta_train.host_devices` sets the CPU device count; once JAX runs, -1 keeps what it has."""
    code = textwrap.dedent(
        """
        import jax
        from meta_train import config as config_lib
        from meta_train import launch
        config = config_lib.load_config("configs/quickstart.py")
        config.meta_train.host_devices = 4
        print(launch.apply_host_devices(config), jax.device_count())
        config.meta_train.host_devices = -1
        print(launch.apply_host_devices(config))
        config.meta_train.host_devices = 2
        try:
            launch.apply_host_devices(config)
        except config_lib.ConfigError as err:
            print("refused:", err)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[:2] == ["4 4", "4"]
    assert lines[2].startswith("refused: meta_train.host_devices=2: JAX's CPU backend already started with 4")


def test_with_loop_unrolling_edits_only_its_own_backend_option():
    from meta_train.parallel import NO_LOOP_UNROLLING, with_loop_unrolling

    assert with_loop_unrolling("", True) == ""
    assert with_loop_unrolling("--a=1", False) == f"--a=1 --xla_backend_extra_options={NO_LOOP_UNROLLING}"
    kept = with_loop_unrolling("--xla_backend_extra_options=x,y=2 --a=1", False)
    assert kept == f"--a=1 --xla_backend_extra_options=x,y=2,{NO_LOOP_UNROLLING}"
    assert with_loop_unrolling(kept, True) == "--a=1 --xla_backend_extra_options=x,y=2"
    assert with_loop_unrolling(f"--xla_backend_extra_options={NO_LOOP_UNROLLING}", True) == ""
    assert with_loop_unrolling(kept, False) == kept


LOOP_UNROLLING_RUN = textwrap.dedent(
    """
    import glob, os, sys, tempfile, warnings
    dump = tempfile.mkdtemp()
    os.environ["XLA_FLAGS"] = f"--xla_dump_to={dump}"
    from meta_train import config as config_lib
    from meta_train import launch
    config = config_lib.load_config("configs/quickstart.py")
    config.xla_cpu_loop_unrolling = sys.argv[1] == "on"
    print(launch.apply_cpu_loop_unrolling(config))
    import jax, jax.numpy as jnp
    jax.jit(lambda x: jnp.tanh(x) * jnp.exp(-x)).lower(jnp.ones(4096)).compile()
    print(sum(len(open(f).read().splitlines()) for f in glob.glob(dump + "/*ir-with-opt.ll")))
    config.xla_cpu_loop_unrolling = not config.xla_cpu_loop_unrolling
    flags = os.environ["XLA_FLAGS"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        print(launch.apply_cpu_loop_unrolling(config), os.environ["XLA_FLAGS"] == flags)
    print(caught[0].message)
    """
)


def test_config_loop_unrolling_changes_the_generated_code_and_warns_once_jax_runs():
    """`xla_cpu_loop_unrolling=False` (the quickstart's) makes XLA:CPU emit less code for the same program;
    asked for once the backend runs, it leaves XLA_FLAGS alone and says why it cannot apply."""
    outputs = {}
    for setting in ("on", "off"):
        result = subprocess.run([sys.executable, "-c", LOOP_UNROLLING_RUN, setting], capture_output=True, text=True,
                                cwd=REPO, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        outputs[setting] = result.stdout.strip().splitlines()
    for setting, lines in outputs.items():
        assert lines[0] == "True" and lines[2] == "False True"
        assert lines[3].startswith(f"xla_cpu_loop_unrolling={setting == 'off'} has no effect: JAX's backend already")
    assert 0 < int(outputs["off"][1]) < 0.9 * int(outputs["on"][1])
