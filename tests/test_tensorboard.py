"""TensorBoard events of lopt-meta-train and lopt-evaluate, read back from the event files without TensorFlow."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import pytest

from meta_train import config as config_lib
from meta_train import tensorboard
from meta_train.run import meta_train
from lopt.tensor_map import parameter_path
from tests.helpers import evaluate_cli
from tests.workdir_runs import write_tiny_config

pytest.importorskip("tensorboardX")


def tiny_config(folder):
    """The shared tiny config (tests/workdir_runs.py) with a checkpoint every 3 meta-steps."""
    config_folder = folder / "config"
    config_folder.mkdir(exist_ok=True)
    config = config_lib.load_config(write_tiny_config(config_folder))
    config.checkpoint.every = 3
    return config


def histogram_steps(folder):
    steps = {}
    for event in tensorboard.read_events(folder):
        for value in event.summary.value:
            if value.HasField("histo"):
                steps.setdefault(value.tag, []).append(int(event.step))
    return steps


def test_meta_training_events_match_metrics_and_histogram_each_meta_param(tmp_path):
    config = tiny_config(tmp_path)
    config.tensorboard.mode = "on"
    summary = meta_train(config, tmp_path, show_progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scalars = tensorboard.read_scalars(tmp_path / tensorboard.FOLDER)
    assert sorted(scalars["meta_loss"]) == [line["step"] for line in lines] == list(range(1, 7))
    for line in lines:
        assert scalars["meta_loss"][line["step"]] == np.float32(line["meta_loss"])
    assert "phase" not in scalars and "step" not in scalars and "inner_steps_per_s" in scalars

    import lopt

    params = lopt.load(summary["export"]).meta_params
    leaves = {"meta_params/" + parameter_path(path)
              for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    histograms = histogram_steps(tmp_path / tensorboard.FOLDER)
    assert set(histograms) == leaves and len(leaves) >= 2
    assert all(steps == [0, 3, 6] for steps in histograms.values())  # the start and each checkpoint


def test_end_of_run_evaluation_writes_each_optimizers_mean_curve(tmp_path):
    config = tiny_config(tmp_path)
    config.tensorboard.mode = "on"
    config.eval.enabled = True
    config.eval.num_tasks, config.eval.num_steps, config.eval.learning_rates = 2, 8, (1e-2, 1e-1)
    meta_train(config, tmp_path, show_progress=False)
    result = json.loads((tmp_path / "eval.json").read_text())
    board = tmp_path / tensorboard.FOLDER / "eval"
    assert sorted(p.name for p in board.iterdir()) == sorted(result["curves"])
    for run_name, curves in result["curves"].items():
        (tag, points), = tensorboard.read_scalars(board / run_name).items()
        assert tag == f"heldout/{result['family']}/train_loss"
        expected = np.mean(np.asarray(curves, np.float64).reshape(-1, config.eval.num_steps), axis=0)
        assert sorted(points) == list(range(config.eval.num_steps))
        np.testing.assert_allclose([points[i] for i in range(config.eval.num_steps)], expected, rtol=1e-6)
    assert "heldout" not in " ".join(tensorboard.read_scalars(tmp_path / tensorboard.FOLDER))


def test_a_resumed_run_hides_events_written_past_its_checkpoint(tmp_path):
    config = tiny_config(tmp_path)
    config.meta_train.num_steps = 3
    meta_train(config, tmp_path, show_progress=False)
    with tensorboard.EventWriter(tmp_path / tensorboard.FOLDER) as crashed:  # an invocation killed after step 3
        crashed.scalars({"meta_loss": 999.0, "stale": 1.0}, 5)
    config.meta_train.num_steps = 6
    meta_train(config, tmp_path, show_progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scalars = tensorboard.read_scalars(tmp_path / tensorboard.FOLDER)
    assert "stale" not in scalars
    assert scalars["meta_loss"] == {line["step"]: np.float32(line["meta_loss"]) for line in lines}
    assert sorted(scalars["meta_loss"]) == list(range(1, 7))


def test_tensorboard_on_without_tensorboardx_is_a_one_line_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    config = tiny_config(tmp_path)
    config.tensorboard.mode = "on"
    with pytest.raises(config_lib.ConfigError) as raised:
        meta_train(config, tmp_path, show_progress=False)
    message = str(raised.value)
    assert "\n" not in message and 'pip install "lopt[tensorboard]"' in message
    assert not (tmp_path / "metrics.jsonl").exists()

    config.tensorboard.mode = "auto"  # without the package, auto trains and writes no events
    config.meta_train.num_steps = 1
    meta_train(config, tmp_path, show_progress=False)
    assert (tmp_path / "metrics.jsonl").exists() and not (tmp_path / tensorboard.FOLDER).exists()


def test_bad_tensorboard_settings_are_config_errors(tmp_path):
    config = tiny_config(tmp_path)
    config.tensorboard.mode = "yes"
    with pytest.raises(config_lib.ConfigError, match="tensorboard.mode must be one of"):
        config_lib.validate(config)


def test_evaluation_writes_mean_curves_against_the_inner_step(tmp_path, export_file, capsys, monkeypatch):
    out = tmp_path / "eval"
    argv = ["--optimizers", str(export_file), "--family", "quadratic", "--family-kwargs", '{"dim": 4}',
            "--learning-rates", "1e-2", "1e-1", "--num-steps", "10", "--num-tasks", "2", "--seeds", "0",
            "--valid-every", "5", "--tensorboard", "on", "--out", str(out)]
    code, _, err = evaluate_cli(argv, capsys)
    assert code == 0, err
    optimizers = json.loads((out / "evaluation.json").read_text())["settings"]["quadratic"]["optimizers"]
    assert set(optimizers) == {"tiny", "adam (tuned lr)"}
    for name, run in (("tiny", "tiny"), ("adam (tuned lr)", "adam_tuned_lr")):
        scalars = tensorboard.read_scalars(out / tensorboard.FOLDER / run)
        train = np.mean(np.asarray(optimizers[name]["curves"]["train_losses"], np.float64), axis=(0, 1))
        assert sorted(scalars["quadratic/train_loss"]) == list(range(10))
        np.testing.assert_array_equal([scalars["quadratic/train_loss"][s] for s in range(10)], train.astype(np.float32))
        valid = np.mean(np.asarray(optimizers[name]["curves"]["valid_losses"], np.float64), axis=(0, 1))
        assert sorted(scalars["quadratic/valid_loss"]) == [0, 5, 10]
        np.testing.assert_array_equal(list(scalars["quadratic/valid_loss"].values()), valid.astype(np.float32))

    assert evaluate_cli(argv, capsys)[0] == 0  # a rerun rewrites the events instead of adding a second copy
    assert len(list((out / tensorboard.FOLDER / "tiny").iterdir())) == 1

    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    code, _, err = evaluate_cli(argv[:-2] + ["--out", str(tmp_path / "other")], capsys)
    assert code == 2 and err.count("\n") == 1 and 'pip install "lopt[tensorboard]"' in err, err
    assert not (tmp_path / "other").exists()
