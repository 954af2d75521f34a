"""Held-out suites (`lopt-evaluate --suite`), the rliable-style aggregates, the new baselines and the one speedup."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import lopt
import tasks
from meta_train.evaluation import aggregates, report, speedup, suites
from meta_train.evaluation import curves as evaluate
from meta_train.evaluation import run as evaluation_run
from meta_train.evaluation import summary as evaluation_summary
from tests.helpers import evaluate_cli

NEW_BASELINES = ("adamw_cosine", "muon", "schedule_free_adamw")


@pytest.mark.parametrize("index", range(len(suites.HELDOUT.entries)), ids=[e.name for e in suites.HELDOUT.entries])
def test_heldout_entries_build_and_train_at_a_tiny_budget_scale(index, shared_data_dir):
    setting = suites.suite_spec(suites.HELDOUT, [], budget_scale=1e-6).settings[index]
    assert setting.num_steps == suites.MIN_SCALED_STEPS
    family = evaluation_run.build_family(setting, str(shared_data_dir))
    adam = lopt.get("adam", learning_rate=1e-2)
    curves = evaluate.train_curves(family, adam, adam.init(None), evaluate.held_out_task_keys(0, 1),
                                   setting.num_steps, final_batches=2)
    assert curves.train_losses.shape == (1, setting.num_steps)
    assert np.all(np.isfinite(curves.train_losses)) and np.all(np.isfinite(curves.final_losses))


def test_heldout_covers_the_promised_generalisation_axes_and_no_meta_training_shape():
    entries = suites.HELDOUT.entries
    images = [e for e in entries if e.family == "mlp_image"]
    assert not any(e.kwargs.get("image_size", 8) == 8 and list(e.kwargs["hidden"]) == [32] for e in images)
    assert any(list(e.kwargs["hidden"]) == [128] for e in images)
    assert any(len(e.kwargs["hidden"]) == 3 for e in images)
    assert any(e.kwargs.get("image_size") in (16, 28) for e in images)
    assert max(e.num_steps for e in entries) >= 20_000
    families = {(e.family, e.kwargs.get("dataset", e.kwargs.get("market"))) for e in entries}
    assert {("cnn_image", "cifar10"), ("transformer_lm", "tiny_shakespeare"), ("logistic_regression", "breast_cancer"),
            ("finance", "sp500")} <= families
    spec = suites.suite_spec(suites.HELDOUT, [], budget_scale=0.1)
    assert [s.num_steps for s in spec.settings] == [max(10, round(e.num_steps / 10)) for e in entries]
    assert set(suites.HELDOUT.baselines) == {"adam", *NEW_BASELINES}


def test_interquartile_mean_and_bootstrap_interval_of_known_inputs():
    assert aggregates.interquartile_mean(np.arange(1, 9)) == pytest.approx(np.mean([3, 4, 5, 6]))
    assert aggregates.interquartile_mean([1.0, 2.0, 3.0, np.nan]) == pytest.approx(2.5)  # NaN sorts last, is trimmed
    constant = aggregates.bootstrap_interval([2.5] * 7, resamples=500)
    assert constant == (2.5, 2.5, 2.5)
    spread = aggregates.bootstrap_interval(np.arange(1, 13, dtype=float), resamples=2000)
    assert 1.0 <= spread.low < spread.value < spread.high <= 12.0
    assert aggregates.bootstrap_interval(np.arange(1, 13, dtype=float), resamples=2000) == spread  # seeded
    with pytest.raises(aggregates.AggregateError, match="non-empty"):
        aggregates.bootstrap_interval([])


def test_one_speedup_definition_for_report_and_lopt_evaluate(tmp_path, capsys):
    assert report.speedups is evaluation_summary.speedups is speedup.speedups
    repo = Path(__file__).resolve().parents[1]
    defining = sorted(str(path.relative_to(repo)) for folder in ("meta_train", "scripts", "lopt", "tasks")
                      for path in (repo / folder).rglob("*.py")
                      if re.search(r"^def (speedups?|first_step\w*)\(", path.read_text(), re.MULTILINE))
    assert defining == ["meta_train/evaluation/speedup.py"]
    config = ml_collections.ConfigDict({"seed": 0, "eval": {
        "seed": 3, "num_tasks": 2, "num_steps": 40, "final_batches": 2, "baseline": "adam",
        "learning_rates": (1e-2, 1e-1)}})
    run = types.SimpleNamespace(family=tasks.get("quadratic", dim=4),
                                learned_optimizer=lopt.get("small_fc_lopt", hidden_sizes=(8,), step_mult=1e-2))
    optimizer = run.learned_optimizer
    report.evaluate_run(config, run, optimizer.init(jax.random.key(1)), tmp_path)
    assert "speedup over tuned adam" in capsys.readouterr().out
    saved = json.loads((tmp_path / report.EVAL_FILE).read_text())
    curves = saved["curves"]
    expected = speedup.speedups(np.asarray(curves["meta_trained"]), np.asarray(curves["tuned_baseline"]))
    np.testing.assert_allclose(saved["speedup_to_tuned_baseline_final"], expected)
    assert saved["speedup_definition"] == evaluation_summary.SPEEDUP_DEFINITION


def test_unknown_suite_is_a_one_line_error_listing_the_suites(tmp_path, capsys):
    code, _, err = evaluate_cli(["--suite", "nope", "--out", str(tmp_path / "out")], capsys)
    assert code == 2
    assert err.strip() == "error: unknown suite 'nope'; choose from heldout"
    code, _, err = evaluate_cli(["--suite", "heldout", "--family", "quadratic", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "drop --family" in err and len(err.strip().splitlines()) == 1
    code, _, err = evaluate_cli(["--task", "quadratic10", "--budget-scale", "0.1", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "--budget-scale needs --suite" in err


def _quadratic_with_matrix(params):
    target = jnp.arange(12.0).reshape(3, 4) / 10.0
    return jnp.sum((params["w"] - target) ** 2) + jnp.sum((params["b"] - 1.0) ** 2)


@pytest.mark.parametrize("name", NEW_BASELINES)
def test_new_baselines_are_registered_and_reduce_a_loss(name):
    baseline = lopt.get(name, learning_rate=0.05)
    assert isinstance(baseline, lopt.HandDesigned)
    assert name in evaluation_run._hand_designed_names()
    transformation = baseline.transformation(baseline.init(None), num_steps=100)
    params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,))}
    state = transformation.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(_quadratic_with_matrix)(params)
        updates, state = transformation.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(100):
        params, state = step(params, state)
    judged = baseline.evaluation_params(state, params)
    initial = float(_quadratic_with_matrix({"w": jnp.zeros((3, 4)), "b": jnp.zeros((4,))}))
    assert float(_quadratic_with_matrix(judged)) < 0.1 * initial


def test_schedule_free_losses_are_measured_at_the_averaged_parameters():
    baseline = lopt.get("schedule_free_adamw", learning_rate=0.1)
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros((4,))}
    transformation = baseline.transformation(baseline.init(None), num_steps=10)
    state = transformation.init(params)
    for _ in range(3):
        updates, state = transformation.update(jax.grad(_quadratic_with_matrix)(params), state, params)
        params = optax.apply_updates(params, updates)
    averaged = baseline.evaluation_params(state, params)
    expected = optax.contrib.schedule_free_eval_params(state, params)
    jax.tree.map(np.testing.assert_array_equal, averaged, expected)
    assert not np.allclose(averaged["w"], params["w"])
    assert lopt.get("adam").evaluation_params(state, params) is params


def test_suite_cli_writes_aggregates_and_resumes(tmp_path, export_file, capsys, monkeypatch):
    tiny = suites.Suite(
        name="tiny",
        entries=(suites.SuiteEntry("quad", "quadratic", {"dim": 4}, 300, "a quadratic"),
                 suites.SuiteEntry("logreg", "logistic_regression", {"dataset": "synthetic", "dim": 5}, 200,
                                   "synthetic logistic regression")),
        baselines=("adam", "adamw_cosine"), reference="adam", schedule_reference="adamw_cosine",
        learning_rates=(1e-2, 1e-1), num_tasks=2, seeds=(0,))
    monkeypatch.setitem(suites.SUITES, "tiny", tiny)
    out = tmp_path / "suite"
    argv = ["--suite", "tiny", "--export", str(export_file), "--budget-scale", "0.1", "--out", str(out)]
    code, stdout, err = evaluate_cli(argv, capsys)
    assert code == 0, err
    result = json.loads((out / "suite.json").read_text())
    assert result["steps"] == {"quad": 30, "logreg": 20}
    overall = result["across_tasks"]
    assert set(overall) == {"tiny", "adam (tuned lr)", "adamw_cosine (tuned lr)"}
    assert overall["adam (tuned lr)"]["speedup"]["iqm"] >= 1.0  # the reference reaches its own final loss
    assert overall["adamw_cosine (tuned lr)"]["loss_ratio"]["adamw_cosine"] == {"iqm": 1.0, "low": 1.0, "high": 1.0}
    assert overall["adamw_cosine (tuned lr)"]["tasks_at_or_below_schedule_reference"] == 2
    per_task = result["per_task"]["quad"]["tiny"]
    assert per_task["loss_ratio"]["adam"] > 0 and per_task["runs"] == 2
    for name in ("suite.md", "table.md", "curves.png", "evaluation.json"):
        assert (out / name).stat().st_size > 0
    assert "loss ratio vs tuned adamw_cosine (IQM)" in stdout

    monkeypatch.setattr(evaluation_run, "_run_unit", lambda *a, **k: pytest.fail("a finished unit was run again"))
    code, again, err = evaluate_cli(argv, capsys)
    assert code == 0, err
    assert json.loads((out / "suite.json").read_text())["across_tasks"] == overall
    code, _, err = evaluate_cli(argv[:-2] + ["--budget-scale", "0.2", "--out", str(out)], capsys)
    assert code == 2 and "different arguments" in err


def test_suite_also_tunes_the_learning_rate_of_a_learned_direction(tmp_path, capsys, monkeypatch):
    celo2 = lopt.get("celo2", learning_rate=1e-2)
    export = tmp_path / "celo2.lopt"
    lopt.save(export, celo2, celo2.init(jax.random.key(0)))
    tiny = suites.Suite(
        name="tiny", entries=(suites.SuiteEntry("quad", "quadratic", {"dim": 4}, 40, "a quadratic"),),
        baselines=("adam", "adamw_cosine"), reference="adam", schedule_reference="adamw_cosine",
        learning_rates=(1e-3, 1e-2, 1e-1), num_tasks=2, seeds=(0,))
    monkeypatch.setitem(suites.SUITES, "tiny", tiny)
    out = tmp_path / "suite"
    code, _, err = evaluate_cli(["--suite", "tiny", "--export", str(export), "--out", str(out)], capsys)
    assert code == 0, err
    entries = json.loads((out / "evaluation.json").read_text())["settings"]["quad"]["optimizers"]
    default, tuned = entries["celo2"], entries["celo2 (tuned lr)"]
    assert all(rate in (1e-3, 1e-2, 1e-1) for rate in tuned["learning_rates"])
    # the grid holds the stored rate (1e-2), so the per-task best can only be as good or better
    assert tuned["final_train_loss"]["mean"] <= default["final_train_loss"]["mean"] * (1 + 1e-4)
    overall = json.loads((out / "suite.json").read_text())["across_tasks"]
    assert {"celo2", "celo2 (tuned lr)"} <= set(overall)
