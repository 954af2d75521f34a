"""Meta-training runs from config files: learning, resume, export, and one-line errors for user mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import lopt
import meta_train
import tasks
from meta_train import build as build_lib
from meta_train import config as config_lib
from meta_train.cli import export_main, meta_train_main
from tests.workdir_runs import TINY_CONFIG, write_tiny_config


@pytest.fixture()
def tiny_config(tmp_path):
    return write_tiny_config(tmp_path)


def run_cli(argv, capsys):
    code = meta_train_main(argv + ["--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_pes_steps_lower_the_meta_loss_on_quadratics():
    family = tasks.get("quadratic", dim=8)
    optimizer = lopt.get("adam", learning_rate=1e-3)
    trainer = meta_train.Trainer(
        family, optimizer, meta_train.PES(num_tasks=16, trunc_length=10, std=0.05),
        meta_train.ConstantHorizon(50), optax.adam(0.1),
    )
    state = trainer.init(jax.random.key(0))
    losses = []
    for _ in range(40):
        state, metrics = trainer.step(state)
        losses.append(float(metrics["meta_loss"]))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert float(state.meta_params["log_learning_rate"]) > np.log(1e-3)


def test_run_resumed_after_stop_is_bit_identical(tmp_path, tiny_config, capsys):
    full = tmp_path / "full"
    code, _, err = run_cli(["--config", str(tiny_config), "--workdir", str(full)], capsys)
    assert code == 0, err
    parted = tmp_path / "parted"
    code, _, err = run_cli(
        ["--config", str(tiny_config), "--workdir", str(parted), "--config.meta_train.num_steps=3"], capsys
    )
    assert code == 0, err
    code, _, err = run_cli(["--config", str(tiny_config), "--workdir", str(parted)], capsys)
    assert code == 0, err
    assert "resumed from checkpoint at meta-step 3" in err
    a, b = lopt.export.read(full / "optimizer.lopt"), lopt.export.read(parted / "optimizer.lopt")
    for x, y in zip(jax.tree.leaves(a.meta_params), jax.tree.leaves(b.meta_params)):
        np.testing.assert_array_equal(x, y)
    steps = [json.loads(line)["step"] for line in (parted / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    full_lines = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
    part_lines = [json.loads(l) for l in (parted / "metrics.jsonl").read_text().splitlines()]
    assert [l["meta_loss"] for l in full_lines] == [l["meta_loss"] for l in part_lines]
    assert (parted / "meta_loss.png").read_bytes().startswith(b"\x89PNG")


def test_meta_loss_plot_reads_metrics_and_survives_a_cut_line(tmp_path):
    from meta_train.meta_loss_plot import plot_meta_loss, read_meta_losses, running_mean

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("\n".join(json.dumps({"step": s, "meta_loss": 1.0 / s}) for s in range(1, 6)) + '\n{"step": 6, "me')
    steps, losses = read_meta_losses(metrics)
    np.testing.assert_array_equal(steps, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(running_mean(np.arange(1.0, 6.0), 2), [1.0, 1.5, 2.5, 3.5, 4.5])
    assert plot_meta_loss(metrics, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes().startswith(b"\x89PNG")
    assert not plot_meta_loss(tmp_path / "missing.jsonl", tmp_path / "none.png")


def test_export_command_and_loaded_optimizer_give_identical_updates(tmp_path, tiny_config, capsys):
    workdir = tmp_path / "run"
    assert run_cli(["--config", str(tiny_config), "--workdir", str(workdir)], capsys)[0] == 0
    out = tmp_path / "again.lopt"
    assert export_main(["--workdir", str(workdir), "--out", str(out)]) == 0
    loaded = lopt.load(out)
    assert loaded.provenance["meta_steps"] == 6
    assert loaded.provenance["config"]["task"]["family"] == "quadratic"
    assert "date" in loaded.provenance
    original = lopt.load(workdir / "optimizer.lopt")
    params = {"w": jax.numpy.linspace(-1.0, 1.0, 12).reshape(3, 4)}
    grads = jax.tree.map(lambda p: 0.3 * p, params)
    results = []
    for item in (loaded, original):
        tx = item.transformation()
        results.append(tx.update(grads, tx.init(params), params)[0]["w"])
    np.testing.assert_array_equal(results[0], results[1])


def test_meta_learning_rate_cosine_decays_to_its_final_fraction():
    config = config_lib.base_config()
    config.meta_train.meta_learning_rate = 1e-2
    config.meta_train.meta_lr_schedule.name = "cosine"
    config.meta_train.meta_lr_schedule.kwargs = {"decay_steps": 10, "final_fraction": 0.2}
    meta_optimizer = build_lib.build_meta_optimizer(config)
    params = {"x": np.zeros(3, np.float32)}
    gradient = {"x": np.full(3, 0.01, np.float32)}  # below the clip, so Adam's step is the rate
    state = meta_optimizer.init(params)
    steps = []
    for _ in range(14):
        updates, state = meta_optimizer.update(gradient, state, params)
        steps.append(-float(updates["x"][0]))
    np.testing.assert_allclose(steps[0], 1e-2, rtol=1e-3)
    assert steps[0] > steps[5] > steps[10]
    np.testing.assert_allclose(steps[10:], 2e-3, rtol=1e-3)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.meta_train.num_taks=4", "unknown config key --config.meta_train.num_taks; did you mean 'num_tasks'?"),
        ("--config.meta_train.num_tasks=four", "--config.meta_train.num_tasks expects a int"),
        ("--config.meta_train.estimator.kwargs.trunc_length=50", "is shorter than trunc_length (50)"),
        ("--config.meta_train.trunc_length=5", "meta_train.trunc_length moved: set meta_train.estimator.kwargs.trunc_length"),
        ("--config.meta_train.horizon_min=5", "meta_train.horizon_min moved: set meta_train.horizon.kwargs.low"),
        ("--config.meta_train.estimator=tbptt", "--config.meta_train.estimator is a group now: set "
                                                "--config.meta_train.estimator.name=tbptt"),
        ("--config.meta_train.horizon.kwargs.lenght=50", "horizon 'constant' takes no argument(s) lenght"),
        ("--config.task.family=mlp", "unknown task family 'mlp'"),
        ("--config.optimizer.name=adamm", "unknown optimizer 'adamm'"),
        ("--config.meta_train.estimator.name=reinforce", "unknown estimator 'reinforce'"),
        ("--config.meta_train.meta_lr_schedule.name=cosine", "schedule 'cosine' needs argument(s) decay_steps"),
        ("--config.meta_train.meta_lr_final_fraction=0", "set meta_train.meta_lr_schedule.kwargs.final_fraction"),
        ("--config.meta_train.host_devices=2", "host_devices=2 splits the CPU into devices for meta_train.parallel"),
        ("--config.meta_train.host_devices=-2", "host_devices must be -1 (one per core)"),
        ("--config.xla_cpu_loop_unrolling=maybe", "--config.xla_cpu_loop_unrolling expects true/false"),
    ],
)
def test_config_mistakes_are_one_line_errors(tmp_path, tiny_config, capsys, override, message):
    code, _, err = run_cli(["--config", str(tiny_config), "--workdir", str(tmp_path / "w"), override], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]


def test_missing_data_folder_is_a_one_line_error(tmp_path, tiny_config, capsys):
    missing = tmp_path / "no_such_folder"
    code, _, err = run_cli(
        ["--config", str(tiny_config), "--workdir", str(tmp_path / "w"), "--config.task.family=mlp_image",
         f"--config.data_dir={missing}", "--config.task.kwargs.dim=8"],
        capsys,
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    config = config_lib.load_config(tiny_config)
    config.task.family = "mlp_image"
    config.task.kwargs = {"dataset": "mnist"}
    config.data_dir = str(missing)
    with pytest.raises(config_lib.ConfigError) as info:
        build_lib.build(config)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)


def test_corrupted_export_file_is_a_one_line_error(tmp_path, tiny_config, capsys):
    workdir = tmp_path / "run"
    assert run_cli(["--config", str(tiny_config), "--workdir", str(workdir)], capsys)[0] == 0
    path = workdir / "optimizer.lopt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(lopt.ExportError) as info:
        lopt.load(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_config_file_and_unwritable_workdir(tmp_path, tiny_config, capsys):
    code, _, err = run_cli(["--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "w")], capsys)
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(["--config", str(tiny_config), "--workdir", str(blocker / "sub")], capsys)
    assert code == 2 and "not writable" in err and len(err.strip().splitlines()) == 1


def test_workdir_of_another_config_is_refused(tmp_path, tiny_config, capsys):
    workdir = tmp_path / "run"
    assert run_cli(["--config", str(tiny_config), "--workdir", str(workdir)], capsys)[0] == 0
    code, _, err = run_cli(
        ["--config", str(tiny_config), "--workdir", str(workdir), "--config.meta_train.estimator.kwargs.std=0.1"], capsys
    )
    assert code == 2 and "different config" in err


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.task.kwargs.hidden=(0,)", "must be positive"),
        ("--config.task.kwargs.image_size=7", "no image_size=7"),
        ("--config.task.kwargs.hidden=abc", "expects a tuple"),
        ("--config.optimizer.kwargs.hidden_sizes=(-1,)", "hidden_sizes must be positive"),
        ("--config.optimizer.kwargs.step_mult=abc", "expects a float"),
        ("--config.task.kwargs.dataset=mnst", "no dataset 'mnst'"),
        ("--config.meta_train.estimator.kwargs.std=-1", "config.meta_train.estimator: PES needs"),
        ("--config.eval.learning_rates=()", "at least one learning rate"),
    ],
)
def test_impossible_values_for_the_quickstart_are_one_line_errors(tmp_path, capsys, override, message):
    quickstart = Path(__file__).resolve().parents[1] / "configs" / "quickstart.py"
    code, _, err = run_cli(["--config", str(quickstart), "--workdir", str(tmp_path / "w"), override], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_compile_cache_keeps_compiled_programs_and_restores_jax_settings(tmp_path):
    from meta_train.run import compile_cache_dir, persistent_compile_cache

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    cache = tmp_path / "cache"
    with persistent_compile_cache(cache, min_compile_seconds=0.0):
        assert jax.config.jax_compilation_cache_dir == str(cache)
        jax.jit(lambda x: jax.numpy.sin(x) * 3.0 + 1.25)(jax.numpy.arange(7.0)).block_until_ready()
    assert cache.is_dir() and any(cache.iterdir())
    assert (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs) == before
    config = config_lib.base_config()
    assert compile_cache_dir(config, tmp_path / "w") == (tmp_path / "w" / "compile_cache").absolute()
    config.compile_cache = ""
    assert compile_cache_dir(config, tmp_path / "w") is None
    config.compile_cache = str(tmp_path / "shared")
    assert compile_cache_dir(config, tmp_path / "w") == tmp_path / "shared"


def test_max_minutes_stops_early_and_the_same_command_continues(tmp_path, tiny_config, capsys):
    workdir = tmp_path / "run"
    code, out, err = run_cli(["--config", str(tiny_config), "--workdir", str(workdir), "--max-minutes", "1e-9"], capsys)
    assert code == 0, err
    assert "stopped at meta-step 0" in out and "--max-minutes" in out
    code, out, err = run_cli(["--config", str(tiny_config), "--workdir", str(workdir)], capsys)
    assert code == 0, err
    assert "stopped at" not in out
    assert lopt.export.read(workdir / "optimizer.lopt").provenance["meta_steps"] == 6
    code, _, err = run_cli(["--config", str(tiny_config), "--workdir", str(workdir), "--max-minutes", "0"], capsys)
    assert code == 2 and err.strip() == "error: --max-minutes must be positive, got 0.0"


def test_export_command_rebuilds_a_reparameterised_mixture_run(tmp_path, capsys):
    config = tmp_path / "mixture.py"
    config.write_text(TINY_CONFIG.replace(
        'config.task.kwargs.dim = 8',
        'config.task.mixture = {"small": {"family": "quadratic", "kwargs": {"dim": 4}},\n'
        '                           "large": {"family": "quadratic", "kwargs": {"dim": 8}}}\n'
        '    config.task.reparameterize.levels = ("global",)'))
    workdir = tmp_path / "run"
    assert run_cli(["--config", str(config), "--workdir", str(workdir)], capsys)[0] == 0
    out = tmp_path / "again.lopt"
    assert export_main(["--workdir", str(workdir), "--out", str(out)]) == 0
    again, original = lopt.export.read(out), lopt.export.read(workdir / "optimizer.lopt")
    for x, y in zip(jax.tree.leaves(again.meta_params), jax.tree.leaves(original.meta_params)):
        np.testing.assert_array_equal(x, y)
