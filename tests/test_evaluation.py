"""`lopt-evaluate` and the evaluation helpers: curves with validation losses and seeds, outputs, resume, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lopt
import tasks
from meta_train.evaluation import curves as evaluate
from meta_train.evaluation import run as evaluation_run
from meta_train.evaluation import speedup
from tests.helpers import evaluate_cli


def arguments(export_file, out):
    return ["--optimizers", str(export_file), "--family", "quadratic", "--family-kwargs", '{"dim": 4}',
            "--baselines", "adam", "sgd+momentum", "--learning-rates", "1e-3", "1e-2", "1e-1", "--num-steps", "30",
            "--num-tasks", "2", "--seeds", "0", "1", "--valid-every", "10", "--out", str(out)]


def test_validation_curves_leave_training_curves_unchanged_and_seeds_vary_runs():
    family = tasks.get("quadratic", dim=4)
    adam = lopt.get("adam", learning_rate=0.05)
    theta = adam.init(None)
    keys = evaluate.held_out_task_keys(0, 2)
    plain = evaluate.train_curves(family, adam, theta, keys, 25)
    checked = evaluate.train_curves(family, adam, theta, keys, 25, valid_every=10)
    other_seed = evaluate.train_curves(family, adam, theta, keys, 25, seed=3, valid_every=10)
    np.testing.assert_array_equal(plain.train_losses, checked.train_losses)
    assert plain.valid_losses.shape == (2, 0) and checked.valid_losses.shape == (2, 4)
    assert evaluate.validation_steps(25, 10).tolist() == [0, 10, 20, 25]
    assert checked.final_valid_losses.shape == (2,)
    assert not np.allclose(other_seed.train_losses, checked.train_losses)


def test_speedups_and_rate_selection():
    slow = np.linspace(1.0, 0.1, 100)[None]
    fast = np.concatenate([np.linspace(1.0, 0.1, 25), np.full(75, 0.05)])[None]
    assert speedup.speedups(slow, slow)[0] == pytest.approx(1.0)
    assert speedup.speedups(fast, slow)[0] > 3.0
    assert speedup.speedups(slow + 1.0, slow)[0] == 0.0
    dips_then_stalls = np.concatenate([np.full(20, 0.05), np.full(80, 0.6)])[None]
    assert np.mean(dips_then_stalls[0, :10]) <= 0.141  # touches tuned Adam's final loss early, then stays above
    assert speedup.speedups(dips_then_stalls, slow)[0] == 0.0
    finals = np.array([[[3.0, 1.0], [1.5, np.nan]], [[1.0, 1.0], [2.0, 0.5]]])  # [seeds, rates, tasks]
    assert evaluate.best_rate_per_task(finals).tolist() == [1, 0]


def test_cli_writes_curves_plot_table_and_resumes(tmp_path, export_file, capsys, monkeypatch):
    out = tmp_path / "eval"
    code, stdout, err = evaluate_cli(arguments(export_file, out), capsys)
    assert code == 0, err
    result = json.loads((out / "evaluation.json").read_text())
    entries = result["settings"]["quadratic"]["optimizers"]
    assert set(entries) == {"tiny", "adam (tuned lr)", "sgd_momentum (tuned lr)"}
    assert np.asarray(entries["tiny"]["curves"]["train_losses"], float).shape == (2, 2, 30)
    assert np.asarray(entries["tiny"]["curves"]["valid_losses"], float).shape == (2, 2, 4)
    assert len(entries["adam (tuned lr)"]["learning_rates"]) == 2
    assert entries["adam (tuned lr)"]["speedup"]["min"] >= 1.0
    table = (out / "table.md").read_text()
    assert "| tiny |" in table and "speedup vs tuned adam" in table and table in stdout
    assert (out / "curves.png").stat().st_size > 10_000
    units = sorted((out / "units").rglob("seed*.json"))
    assert len(units) == 6

    def fail(*args, **kwargs):
        raise AssertionError("a finished unit was recomputed")

    monkeypatch.setattr(evaluation_run, "_run_unit", fail)
    assert evaluate_cli(arguments(export_file, out), capsys)[0] == 0
    monkeypatch.undo()
    units[0].unlink()
    calls = []
    original = evaluation_run._run_unit
    monkeypatch.setattr(evaluation_run, "_run_unit", lambda *a: calls.append(a[0].path) or original(*a))
    assert evaluate_cli(arguments(export_file, out), capsys)[0] == 0
    assert calls == [units[0]]
    assert json.loads((out / "evaluation.json").read_text())["settings"] == result["settings"]

    changed = arguments(export_file, out)
    changed[changed.index("--num-steps") + 1] = "40"
    code, _, err = evaluate_cli(changed, capsys)
    assert code == 2 and err.count("\n") == 1 and "different arguments (settings)" in err


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--optimizers", "{tmp}/missing.lopt", "missing.lopt: no such file"),
        ("--optimizers", "{tmp}/corrupt.lopt", "checksum mismatch"),
        ("--optimizers", "pretrained:nope", "no pretrained optimizer 'nope'; available:"),
        ("--family", "quadratc", "unknown task family 'quadratc'"),
        ("--baselines", "adamm", "unknown baseline 'adamm'"),
        ("--family-kwargs", "{dim: 4}", "--family-kwargs is not valid JSON"),
        ("--family-kwargs", '{"dimm": 4}', "has no argument(s) dimm"),
        ("--seeds", "-1", "seeds must be"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, export_file, capsys, flag, value, message):
    corrupt = tmp_path / "corrupt.lopt"
    data = bytearray(export_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    argv = arguments(export_file, tmp_path / "out")
    argv[argv.index(flag) + 1] = value.replace("{tmp}", str(tmp_path))
    code, _, err = evaluate_cli(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out" / "units").exists()


def test_config_evaluates_each_mixture_family_built_as_meta_training_builds_it(tmp_path, capsys, monkeypatch):
    config_file = tmp_path / "mixture.py"
    config_file.write_text(
        "from meta_train.config import base_config\n\n"
        "def get_config():\n"
        "    config = base_config()\n"
        "    config.task.mixture = {'quad4': {'family': 'quadratic', 'kwargs': {'dim': 4}},\n"
        "                           'quad6': {'family': 'quadratic', 'kwargs': {'dim': 6}}}\n"
        "    config.task.reparameterize.levels = ('global',)\n"
        "    return config\n")
    built = []
    original = evaluation_run.build_family
    monkeypatch.setattr(evaluation_run, "build_family", lambda setting, data_dir="": built.append(
        original(setting, data_dir)) or built[-1])
    out = tmp_path / "eval"
    code, _, err = evaluate_cli(["--config", str(config_file), "--baselines", "adam", "--learning-rates", "1e-2",
                                 "--num-steps", "5", "--num-tasks", "1", "--out", str(out)], capsys)
    assert code == 0, err
    assert set(json.loads((out / "evaluation.json").read_text())["settings"]) == {"quad4", "quad6"}
    assert sorted(family.dim for family in built) == [4, 6]
    assert not any(isinstance(family, tasks.ReparameterizedFamily) for family in built)


def test_runs_own_exports_are_labelled_by_their_run_folder_and_repeats_are_numbered():
    sources = ["runs/conv_lopt/optimizer.lopt", "runs/small_fc_lopt/optimizer.lopt", "celo.lopt",
               "elsewhere/celo.lopt", "pretrained:celo"]
    labels = evaluation_run.unique_labels([evaluation_run.optimizer_label(s) for s in sources])
    assert labels == ["conv_lopt", "small_fc_lopt", "celo", "celo-2", "celo-3"]
