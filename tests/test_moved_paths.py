"""Issue-20 moves: old module paths and config keys keep working (with a warning) or fail on one line naming the
new spelling, and the Python fast path splits the CPU the way the command line does."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from meta_train import build as build_lib
from meta_train import config as config_lib
from meta_train import launch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("old_module, name, new_module", [
    ("meta_train.evaluate", "speedups", "meta_train.evaluation.speedup"),
    ("meta_train.evaluate", "train_curves", "meta_train.evaluation.curves"),
    ("meta_train.evaluation_run", "run_evaluation", "meta_train.evaluation.run"),
    ("meta_train.evaluation_cli", "main", "meta_train.evaluation.cli"),
    ("meta_train.report", "evaluate_run", "meta_train.evaluation.report"),
    ("meta_train.suites", "get_suite", "meta_train.evaluation.suites"),
    ("meta_train.aggregates", "interquartile_mean", "meta_train.evaluation.aggregates"),
])
def test_old_evaluation_paths_warn_and_give_the_moved_object(old_module, name, new_module):
    import importlib

    old, new = importlib.import_module(old_module), importlib.import_module(new_module)
    with pytest.warns(DeprecationWarning, match=f"{old_module}.{name} moved to {new_module}.{name}"):
        assert getattr(old, name) is getattr(new, name)


def test_build_and_process_setup_moved_out_of_config_with_a_warning():
    with pytest.warns(DeprecationWarning, match="meta_train.config.build moved to meta_train.build.build"):
        assert config_lib.build is build_lib.build
    with pytest.warns(DeprecationWarning, match="moved to meta_train.launch.apply_host_devices"):
        assert config_lib.apply_host_devices is launch.apply_host_devices
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config_lib.base_config()  # the schema itself stays where it was, silently


@pytest.mark.parametrize("line, message", [
    ("config.meta_train.trunc_length = 50",
     "config key meta_train.trunc_length moved: set meta_train.estimator.kwargs.trunc_length instead"),
    ("config.meta_train.horizon_max = 2000", "meta_train.horizon_max moved: set meta_train.horizon.kwargs.high"),
    ("config.meta_train.meta_lr_decay_steps = 100", "set meta_train.meta_lr_schedule.kwargs.decay_steps"),
    ("config.meta_train.estimator = 'tbptt'", "config.meta_train.estimator is a group now: set "
                                              "config.meta_train.estimator.name = NAME"),
    ("config.meta_train.horizon = 'log_uniform'", "config.meta_train.horizon is a group now"),
])
def test_a_config_file_with_an_old_key_is_a_one_line_error_naming_the_new_one(tmp_path, line, message):
    path = tmp_path / "old.py"
    path.write_text("from meta_train.config import base_config\n\n"
                    f"def get_config():\n    config = base_config()\n    {line}\n    return config\n")
    with pytest.raises(config_lib.ConfigError) as info:
        build_lib.build(config_lib.load_config(path))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_use_all_cores_gives_a_default_trainer_the_command_lines_device_split(tmp_path):
    script = textwrap.dedent("""
        import meta_train.launch
        count = meta_train.launch.use_all_cores(num_tasks=8)
        import jax, optax, lopt, tasks, meta_train
        from meta_train.parallel import host_device_count
        trainer = meta_train.Trainer(tasks.get("quadratic", dim=4), lopt.get("adam"),
                                     meta_train.PES(num_tasks=8, trunc_length=5), meta_train.ConstantHorizon(10))
        state, metrics = trainer.step(trainer.init(jax.random.key(0)))
        print(count, host_device_count(-1, 8), trainer.parallelism.mode, trainer.parallelism.num_devices,
              float(metrics["meta_loss"]) > 0)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    count, expected, mode, used, finite = done.stdout.split()
    assert int(count) == int(expected) == int(used) and finite == "True"
    assert mode == ("shard_map" if int(count) > 1 else "none")


def test_choosing_another_horizon_on_the_command_line_starts_from_its_own_defaults():
    config = config_lib.load_config(REPO / "configs" / "generalist.py")
    assert config.meta_train.horizon.name == "log_uniform" and config.meta_train.horizon.kwargs.high == 2000
    config_lib.parse_overrides(config, ["--config.meta_train.horizon.kwargs.length=300",
                                        "--config.meta_train.horizon.name=constant"])
    assert config.meta_train.horizon.to_dict() == {"name": "constant", "kwargs": {"length": 300}}
    same = config_lib.load_config(REPO / "configs" / "generalist.py")
    config_lib.parse_overrides(same, ["--config.meta_train.horizon.name=log_uniform",
                                      "--config.meta_train.horizon.kwargs.high=500"])
    assert same.meta_train.horizon.kwargs.to_dict() == {"low": 100, "high": 500}


def test_build_from_file_applies_overrides_like_the_command_line():
    run = build_lib.build_from_file(str(REPO / "configs" / "quickstart.py"), ["--config.meta_train.num_tasks=4"])
    assert run.trainer.estimator.num_tasks == 4 and run.learned_optimizer.name == "small_fc_lopt"
