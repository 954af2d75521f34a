"""Shared pytest fixtures: the repository's optional real-data folder, small deterministic tasks and a tiny export."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# Tests marked `slow` (the marker is registered in pyproject.toml): `python -m pytest -q -m "not slow" tests`
# runs the rest in a few minutes; `python -m pytest -q tests` (CI) runs all. An entry is a test's node id
# (every parametrisation of it) or a test file (every test in it).
SLOW_TESTS = (
    # fresh Python processes: lopt-meta-train runs, several processes together, scripts, pip
    "tests/test_bench_quality.py",
    "tests/test_tutorials.py::test_tutorial_executes_and_draws_its_figures",
    "tests/test_checkpoint_fallback.py",  # its module fixture meta-trains two runs
    "tests/test_distributed.py::test_eight_devices_give_the_meta_gradient_of_one",
    "tests/test_distributed.py::test_two_processes_meta_train_together_and_resume_from_one_writer",
    "tests/test_distributed.py::test_force_host_devices_splits_the_cpu_and_refuses_once_the_backend_runs",
    "tests/test_distributed.py::test_config_host_devices_splits_the_cpu_before_jax_starts",
    "tests/test_distributed.py::test_config_loop_unrolling_changes_the_generated_code_and_warns_once_jax_runs",
    "tests/test_folder_lock.py::test_two_processes_lock_the_workdir_once_and_both_stop_when_it_is_held",
    "tests/test_interruption.py::test_signal_saves_the_finished_meta_step_and_exits_with_one_line",
    "tests/test_interruption.py::test_second_signal_exits_at_once_keeping_the_previous_checkpoint",
    "tests/test_interruption.py::test_interrupted_runs_resume_bit_identical_to_an_uninterrupted_one",
    "tests/test_interruption.py::test_a_signal_to_one_of_two_processes_stops_both_at_the_same_meta_step",
    "tests/test_pretrained.py::test_loads_from_an_installed_package",
    "tests/test_reliability.py::test_sigkill_sigterm_and_a_damaged_checkpoint_then_resume_is_bit_identical",
    "tests/test_torch_optim_api.py::test_example_runs_from_one_command",
    # meta-training in this process
    "tests/test_architectures.py::test_pes_steps_from_the_quadratic_config_lower_the_meta_loss",
    "tests/test_architectures.py::test_mlp_config_builds_and_runs_one_meta_step",
    "tests/test_estimators.py::test_estimator_raises_a_too_small_learning_rate_and_lowers_the_meta_loss",
    "tests/test_estimators.py::test_gradient_accumulation_averages_several_estimator_calls",
    "tests/test_estimators.py::test_pes_converges_where_exact_gradients_do_and_truncated_backprop_does_not",
    "tests/test_estimators.py::test_several_families_mixed_in_one_run_each_with_its_own_batch",
    "tests/test_generalist_config.py::test_generalist_trains_celo2_on_four_reparameterised_8x8_mlp_families",
    "tests/test_generalist_config.py::test_generalist_run_resumes_bit_for_bit",
    "tests/test_mup.py::test_multiwidth_config_builds_and_runs_two_meta_steps",
    "tests/test_reparameterize.py::test_config_file_selects_reparameterisation_and_meta_trains",
    "tests/test_run.py::test_pes_steps_lower_the_meta_loss_on_quadratics",
    "tests/test_run.py::test_run_resumed_after_stop_is_bit_identical",
    "tests/test_run.py::test_export_command_and_loaded_optimizer_give_identical_updates",
    "tests/test_run.py::test_max_minutes_stops_early_and_the_same_command_continues",
    "tests/test_run.py::test_export_command_rebuilds_a_reparameterised_mixture_run",
    "tests/test_task_configs.py::test_family_config_runs_two_meta_steps",
    # evaluation suites (lopt-evaluate, the held-out suite on real data)
    "tests/test_evaluation.py::test_cli_writes_curves_plot_table_and_resumes",
    "tests/test_suite.py::test_heldout_entries_build_and_train_at_a_tiny_budget_scale",
    "tests/test_suite.py::test_suite_cli_writes_aggregates_and_resumes",
    "tests/test_suite.py::test_suite_also_tunes_the_learning_rate_of_a_learned_direction",
)


def _is_slow(nodeid: str) -> bool:
    return any(nodeid == entry or nodeid.startswith((entry + "[", entry + "::")) for entry in SLOW_TESTS)


@pytest.hookimpl(tryfirst=True)  # before pytest's own hook deselects by `-m`
def pytest_collection_modifyitems(config, items):
    """Adds the `slow` marker to the tests SLOW_TESTS names."""
    for item in items:
        if _is_slow(item.nodeid):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real datasets beside the checkout (../shared/data); tests that need them skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-data folder {SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="module")
def export_file(tmp_path_factory) -> Path:
    """An untrained `small_fc_lopt` learned optimizer (hidden (8,), step_mult 1e-2) saved as an export file."""
    # Imported here, not at the top, so that JAX starts only after XLA_FLAGS below is set.
    import jax

    import lopt

    optimizer = lopt.get("small_fc_lopt", hidden_sizes=(8,), step_mult=1e-2)
    path = tmp_path_factory.mktemp("export") / "tiny.lopt"
    lopt.save(path, optimizer, optimizer.init(jax.random.key(0)), {"note": "untrained"})
    return path


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests are dominated by XLA compile time; the backend's optimisation passes buy little at these sizes.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
