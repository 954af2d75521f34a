"""One run per folder: a live holder refuses a second run in one line; a stale lock is taken over with a note."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from meta_train import folder_lock
from meta_train.cli import meta_train_main
from meta_train.folder_lock import LOCK_FILE, FolderLock, FolderLockedError
from tests.workdir_runs import start_two_processes, write_tiny_config


def finished_pid() -> int:
    """Returns the pid of a process that has exited (and been reaped), so nothing runs under it."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(folder, **fields):
    record = {"program": "lopt-meta-train", "pid": os.getpid(), "host": socket.gethostname(),
              "started": "2025-01-01T00:00:00+00:00", "token": "someone-else"}
    record.update(fields)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_FILE).write_text(json.dumps(record))


def test_live_holder_refuses_a_second_lock_naming_it_and_release_frees_the_folder(tmp_path):
    first = FolderLock(tmp_path / "run", "lopt-meta-train")
    first.acquire()
    record = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["started"]
    with pytest.raises(FolderLockedError) as info:
        FolderLock(tmp_path / "run", "lopt-evaluate").acquire()
    message = str(info.value)
    assert "\n" not in message and f"pid {os.getpid()} on host {socket.gethostname()}" in message
    assert "in use by lopt-meta-train" in message and record["started"] in message
    first.release()
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    second = FolderLock(tmp_path / "run", "lopt-evaluate")
    second.acquire()
    second.release()


@pytest.mark.parametrize("fields, reason", [
    ({"pid": None}, "that process is gone"),
    ({"process_start_ticks": -1}, "its pid now belongs to another process"),
    ({"boot_id": "an-earlier-boot"}, "the host has restarted since"),
])
def test_stale_lock_on_this_host_is_taken_over_with_a_note(tmp_path, capsys, fields, reason):
    if fields.get("pid", 0) is None:
        fields = {"pid": finished_pid()}
    if "process_start_ticks" in fields and folder_lock._process_start_ticks(os.getpid()) is None:
        pytest.skip("no /proc on this system")
    if "boot_id" in fields and not folder_lock._boot_id():
        pytest.skip("no boot id on this system")
    write_lock(tmp_path, **fields)
    lock = FolderLock(tmp_path, "lopt-meta-train")
    lock.acquire()
    err = capsys.readouterr().err
    assert err.startswith(f"note: took over the lock of {tmp_path} from lopt-meta-train") and reason in err
    assert len(err.splitlines()) == 1
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == lock.token
    lock.release()


def test_lock_of_another_host_is_stale_only_once_its_heartbeat_stops(tmp_path, capsys):
    write_lock(tmp_path, host="another-host", pid=1)
    with pytest.raises(FolderLockedError, match="on host another-host"):
        FolderLock(tmp_path, "lopt-meta-train").acquire()
    long_ago = time.time() - 2 * folder_lock.STALE_AFTER_SECONDS
    os.utime(tmp_path / LOCK_FILE, (long_ago, long_ago))
    lock = FolderLock(tmp_path, "lopt-meta-train")
    lock.acquire()
    assert "its heartbeat stopped" in capsys.readouterr().err
    lock.release()


def test_release_leaves_a_lock_that_another_run_took_over(tmp_path):
    lock = FolderLock(tmp_path, "lopt-meta-train")
    lock.acquire()
    write_lock(tmp_path, token="the-new-holder")
    assert not lock.still_held()
    lock.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == "the-new-holder"


def test_second_meta_train_on_a_locked_workdir_is_refused_in_one_line(tmp_path, capsys):
    config = write_tiny_config(tmp_path)
    workdir = tmp_path / "run"
    holder = FolderLock(workdir, "lopt-meta-train")
    holder.acquire()
    code = meta_train_main(["--config", str(config), "--workdir", str(workdir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {workdir} is in use by lopt-meta-train (pid {os.getpid()}")
    assert not (workdir / "metrics.jsonl").exists() and not (workdir / "config.json").exists()
    holder.release()


def test_two_processes_lock_the_workdir_once_and_both_stop_when_it_is_held(tmp_path):
    """The lock is taken by process 0 alone; when it is held, every process stops with one line."""
    config = write_tiny_config(tmp_path)
    workdir = tmp_path / "run"
    holder = FolderLock(workdir, "lopt-meta-train")
    holder.acquire()
    processes = start_two_processes(config, workdir)
    errors = []
    for process in processes:
        _, err = process.communicate(timeout=600)
        assert process.returncode == 2, err
        errors.append([line for line in err.splitlines() if line.startswith("error:")])
    assert len(errors[0]) == 1 and f"in use by lopt-meta-train (pid {os.getpid()}" in errors[0][0]
    assert len(errors[1]) == 1 and "(see process 0)" in errors[1][0]
    holder.release()


def test_evaluate_refuses_an_output_folder_in_use(tmp_path, capsys):
    from meta_train.evaluation import cli as evaluation_cli

    holder = FolderLock(tmp_path / "eval", "lopt-evaluate")
    holder.acquire()
    code = evaluation_cli.main(["--family", "quadratic", "--num-tasks", "1", "--out", str(tmp_path / "eval"),
                                "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {tmp_path / 'eval'} is in use by lopt-evaluate (pid {os.getpid()}")
    holder.release()
