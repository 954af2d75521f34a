"""SIGINT and SIGTERM stop lopt-meta-train cleanly: checkpointed, one line, 130/143, resumable bit for bit."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from meta_train import run
from meta_train import config as config_lib
from meta_train.checkpoint import Checkpointer
from meta_train.cli import meta_train_main
from meta_train.folder_lock import LOCK_FILE
from meta_train.interruption import StopRequest
from tests.workdir_runs import REPO, assert_same_run, command, start_two_processes, write_tiny_config

SAVED_LINE = re.compile(
    r"interrupted by (SIGINT|SIGTERM): checkpoint at meta-step (\d+) saved in (\S+); rerun the same command to resume"
)
SECOND_LINE = re.compile(
    r"second signal \((SIGINT|SIGTERM)\): exited at once without saving; the checkpoint at meta-step (\d+) is intact; "
    r"rerun the same command to resume"
)


def wait_for_metrics(process: subprocess.Popen, workdir: Path, lines: int) -> None:
    """Returns once the run has logged `lines` meta-steps (it is then training, its signal handlers in place)."""
    metrics = workdir / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= lines):
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Three long runs started together and stopped by SIGINT, by SIGTERM, and by SIGINT then SIGTERM at once."""
    root = tmp_path_factory.mktemp("interrupted")
    config = write_tiny_config(root)
    signals = {"sigint": [signal.SIGINT], "sigterm": [signal.SIGTERM], "twice": [signal.SIGINT, signal.SIGTERM]}
    processes = {
        name: subprocess.Popen(command(config, root / name, "--config.meta_train.num_steps=100000"), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in signals
    }
    results = {}
    for name, process in processes.items():
        wait_for_metrics(process, root / name, lines=3)
        for number in signals[name]:
            process.send_signal(number)
    for name, process in processes.items():
        out, err = process.communicate(timeout=600)
        results[name] = (process.returncode, out, err)
    return root, config, results


def checkpoint_names(workdir: Path):
    return sorted((p.name for p in (workdir / "checkpoints").iterdir()), key=lambda n: int(n.split(".")[0]))


@pytest.mark.parametrize("name, status", [("sigint", 130), ("sigterm", 143)])
def test_signal_saves_the_finished_meta_step_and_exits_with_one_line(interrupted, name, status):
    root, _, results = interrupted
    code, out, err = results[name]
    assert code == status, err
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    match = SAVED_LINE.fullmatch(lines[0])
    assert match and match.group(1) == name.upper() and match.group(3) == str(root / name)
    step = int(match.group(2))
    assert checkpoint_names(root / name)[-1] == str(step)
    assert not [p for p in (root / name / "checkpoints").iterdir() if "tmp" in p.name]
    assert not (root / name / LOCK_FILE).exists()


def test_second_signal_exits_at_once_keeping_the_previous_checkpoint(interrupted):
    root, _, results = interrupted
    code, _, err = results["twice"]
    lines = err.splitlines()
    assert len(lines) == 1, err
    match = SECOND_LINE.fullmatch(lines[0])
    assert match and code == {"SIGINT": 130, "SIGTERM": 143}[match.group(1)]
    complete = [n for n in checkpoint_names(root / "twice") if n.isdigit()]
    assert complete[-1] == match.group(2)
    assert not (root / "twice" / LOCK_FILE).exists()


def test_interrupted_runs_resume_bit_identical_to_an_uninterrupted_one(interrupted, capsys):
    root, config, _ = interrupted
    stopped_at = [int(checkpoint_names(root / name)[-1].split(".")[0]) for name in ("sigint", "sigterm", "twice")]
    steps = f"--config.meta_train.num_steps={max(stopped_at) + 2}"
    assert meta_train_main(["--config", str(config), "--workdir", str(root / "reference"), "--no-progress", steps]) == 0
    for name in ("sigint", "sigterm", "twice"):
        assert meta_train_main(["--config", str(config), "--workdir", str(root / name), "--no-progress", steps]) == 0
        assert_same_run(root / "reference", root / name)
        assert Checkpointer(root / name / "checkpoints").latest_step() == max(stopped_at) + 2


def test_stop_requested_before_the_first_meta_step_saves_nothing(tmp_path):
    config = config_lib.parse_overrides(config_lib.load_config(str(write_tiny_config(tmp_path))), [])
    stop = StopRequest()
    stop.signal_number = int(signal.SIGTERM)
    summary = run.meta_train(config, tmp_path / "run", show_progress=False, stop=stop)
    assert summary["interrupted_by"] == "SIGTERM" and summary["exit_status"] == 143
    assert summary["meta_steps"] == 0 and summary["saved_step"] is None
    assert not list((tmp_path / "run" / "checkpoints").iterdir())
    assert not (tmp_path / "run" / "optimizer.lopt").exists() and not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_signal_to_one_of_two_processes_stops_both_at_the_same_meta_step(tmp_path):
    config = write_tiny_config(tmp_path)
    workdir = tmp_path / "run"
    processes = start_two_processes(config, workdir, "--config.meta_train.num_steps=100000")
    wait_for_metrics(processes[0], workdir, lines=3)
    processes[1].send_signal(signal.SIGTERM)
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [143, 143], outputs
    # under load a progress-bar remnant can follow the line, so the line is found, not assumed last
    line = [text.strip() for text in outputs[0][1].splitlines() if "interrupted by" in text][-1]
    line = line.replace("a signal to another process", "SIGTERM")
    match = SAVED_LINE.fullmatch(line)
    assert match, outputs[0][1]
    assert checkpoint_names(workdir)[-1] == match.group(2)
    assert "Traceback" not in outputs[0][1] + outputs[1][1]
    assert not (workdir / LOCK_FILE).exists()


def test_graceful_stop_records_the_signal_and_restores_the_handlers_after():
    from meta_train.interruption import graceful_stop

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with graceful_stop() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 60
        while not stop.requested() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.signal_name == "SIGTERM" and stop.exit_status == 143
    stop.reclaim_signals()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_sigint_ignored_before_the_run_stays_ignored():
    """A run started in the background by a script (`nohup cmd &`) inherits an ignored SIGINT; a stray Ctrl-C in
    that terminal must not stop it, while SIGTERM still does."""
    from meta_train.interruption import graceful_stop

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with graceful_stop():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
