"""A damaged newest checkpoint is moved aside and the run continues, bit for bit, from the newest readable one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import lopt
from meta_train.cli import export_main, meta_train_main
from tests.workdir_runs import REPO, assert_same_run, command, write_tiny_config


def run_cli(argv, capfd):
    code = meta_train_main(argv + ["--no-progress"])
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def damage(checkpoint: Path, how: str) -> None:
    """Damages a checkpoint the way a disk fault or a stray command would: its array data or its metadata."""
    data = [p for p in (checkpoint / "default" / "d").iterdir() if p.is_file()]
    metadata = [checkpoint / "default" / "_METADATA", checkpoint / "default" / "manifest.ocdbt"]
    assert data and all(p.is_file() for p in metadata)
    for path in data if how in ("truncated", "deleted") else metadata:
        if how == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif how == "deleted":
            path.unlink()
        elif how == "garbage":
            path.write_bytes(b"\x00not an orbax file\xff" * 5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A reference run of 8 meta-steps and a run stopped at 6 with checkpoints 2, 4 and 6."""
    root = tmp_path_factory.mktemp("fallback")
    config = write_tiny_config(root)
    assert meta_train_main(["--config", str(config), "--workdir", str(root / "reference"), "--no-progress",
                            "--config.meta_train.num_steps=8"]) == 0
    assert meta_train_main(["--config", str(config), "--workdir", str(root / "stopped"), "--no-progress"]) == 0
    assert sorted(p.name for p in (root / "stopped" / "checkpoints").iterdir()) == ["2", "4", "6"]
    return root, config


def check_continued_from_4(root: Path, workdir: Path, err: str) -> None:
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "6 is unreadable" in warnings[0] and "moved to 6.corrupt" in warnings[0], err
    assert "using checkpoint 4" in warnings[0]
    assert "resumed from checkpoint at meta-step 4" in err
    assert "Traceback" not in err and "Event loop is closed" not in err
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "6", "6.corrupt", "8"]
    assert_same_run(root / "reference", workdir)


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_damaged_newest_checkpoint_is_moved_aside_and_the_run_continues_bit_identically(runs, tmp_path, capfd, how):
    root, config = runs
    workdir = tmp_path / "run"
    shutil.copytree(root / "stopped", workdir)
    capfd.readouterr()
    damage(workdir / "checkpoints" / "6", how)
    code, _, err = run_cli(["--config", str(config), "--workdir", str(workdir), "--config.meta_train.num_steps=8"],
                           capfd)
    assert code == 0, err
    check_continued_from_4(root, workdir, err)


def test_deleted_files_fall_back_with_one_warning_line_and_no_orbax_tracebacks(runs, tmp_path):
    # In a fresh process: pytest replaces sys.unraisablehook, where orbax's leftover tracebacks go.
    root, config = runs
    workdir = tmp_path / "run"
    shutil.copytree(root / "stopped", workdir)
    damage(workdir / "checkpoints" / "6", "deleted")
    result = subprocess.run(command(config, workdir, "--config.meta_train.num_steps=8"), capture_output=True,
                            text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    others = [line for line in result.stderr.splitlines() if not line.startswith("resumed from")]
    assert len(others) == 1 and others[0].startswith("warning:"), result.stderr
    check_continued_from_4(root, workdir, result.stderr)


def test_no_readable_checkpoint_is_a_one_line_error_listing_what_was_tried(runs, tmp_path, capfd):
    root, config = runs
    workdir = tmp_path / "run"
    shutil.copytree(root / "stopped", workdir)
    capfd.readouterr()
    for step in ("2", "4", "6"):
        damage(workdir / "checkpoints" / step, "garbage")
    code, _, err = run_cli(["--config", str(config), "--workdir", str(workdir)], capfd)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: no readable checkpoint in ")
    assert all(f"{step} is unreadable" in lines[0] for step in ("6", "4", "2"))
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4", "6"]


def test_export_falls_back_without_moving_anything(runs, tmp_path, capfd):
    root, _ = runs
    workdir = tmp_path / "run"
    shutil.copytree(root / "stopped", workdir)
    damage(workdir / "checkpoints" / "6", "truncated")
    capfd.readouterr()
    assert export_main(["--workdir", str(workdir), "--out", str(tmp_path / "out.lopt")]) == 0
    err = capfd.readouterr().err
    assert "using checkpoint 4" in err and "moved" not in err
    assert lopt.export.read(tmp_path / "out.lopt").provenance["meta_steps"] == 4
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4", "6"]
