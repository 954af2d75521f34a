"""A meta-training run in a workdir: resume, progress, JSON-lines metrics, checkpoints, export and evaluation."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import jax
from jax.experimental.compilation_cache import compilation_cache
import ml_collections
import numpy as np
from tqdm import tqdm

from lopt import export
from meta_train import build as build_lib
from meta_train import config as config_lib
from meta_train import launch
from meta_train import tensorboard as tensorboard_lib
from meta_train.meta_loss_plot import PLOT_FILE, plot_meta_loss
from meta_train.checkpoint import CheckpointError, Checkpointer, to_host
from meta_train.files import EXPORT_FILE, WorkdirError, prepare_workdir, tree_digest, write_text_atomic  # noqa: F401 - public here too
from meta_train.folder_lock import FolderLockedError, folder_lock
from meta_train.interruption import StopRequest, exit_status
from meta_train.trainer import place_state

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
TIME_FILE = "train_seconds.json"
COMPILE_CACHE_DIR = "compile_cache"


def _scalars(metrics: Dict[str, Any]) -> Dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in metrics.items()}


def _trim_metrics(path: Path, last_step: int) -> None:
    """Drops metric lines past `last_step` (written after the checkpoint a resumed run starts from)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def provenance(config: ml_collections.ConfigDict, step: int) -> Dict[str, Any]:
    """Returns where trained meta-params came from: config, meta-steps, date and versions."""
    return {
        "config": json.loads(config.to_json_best_effort()),
        "meta_steps": int(step),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {name: _version(name) for name in ("lopt", "jax", "optax", "flax")},
    }


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _seconds_before(path: Path, start: int) -> float:
    """Returns the wall-clock seconds earlier invocations spent reaching the checkpoint a run resumes from."""
    try:
        record = json.loads(path.read_text())
        return float(record["seconds"]) if int(record["step"]) <= start else 0.0
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _any_process(flag: bool) -> bool:
    """Returns whether `flag` is set on any process (a signal may reach only some of them)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _all_agree(flag: bool) -> bool:
    """Returns process 0's `flag` on every process (so all stop at the same meta-step)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag)))


@contextlib.contextmanager
def persistent_compile_cache(directory: Optional[Path], min_compile_seconds: float = 1.0) -> Iterator[None]:
    """Within the block, XLA programs that took at least `min_compile_seconds` to compile are kept in
    `directory` and loaded from there when compiled again (by a resumed or repeated run); None leaves
    JAX's cache settings alone. JAX's previous settings are restored afterwards."""
    if directory is None:
        yield
        return
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    previous = [getattr(jax.config, name) for name in names]
    jax.config.update(names[0], str(directory))
    jax.config.update(names[1], float(min_compile_seconds))
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        for name, value in zip(names, previous):
            jax.config.update(name, value)
        compilation_cache.reset_cache()


def compile_cache_dir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Optional[Path]:
    """The folder `config.compile_cache` names: 'workdir' is WORKDIR/compile_cache, '' is none."""
    setting = str(config.compile_cache)
    if not setting:
        return None
    return Path(workdir).absolute() / COMPILE_CACHE_DIR if setting == "workdir" else Path(setting).expanduser()


def meta_train(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, show_progress: bool = True,
    max_seconds: Optional[float] = None, stop: Optional[StopRequest] = None,
) -> Dict[str, Any]:
    """Runs (or resumes) the meta-training described by `config` in `workdir`; returns a summary.

    With `max_seconds`, training stops early (checkpointed and exported as usual) once the run's
    wall-clock time, summed over resumed invocations, reaches it; `summary["meta_steps"]` is
    then the number of meta-steps done. Once `stop` (see interruption.graceful_stop) is
    requested, the current meta-step finishes, a checkpoint is written and the run returns
    without exporting or evaluating, `summary["interrupted_by"]` naming the signal. Compiled
    programs are kept in `config.compile_cache` (default WORKDIR/compile_cache), so a resumed
    run starts without compiling again. The workdir is locked (WORKDIR/lock.json) while it runs.
    """
    with persistent_compile_cache(compile_cache_dir(config, workdir)):
        return _meta_train(config, workdir, show_progress, max_seconds, stop)


def _meta_train(config, workdir, show_progress, max_seconds, stop) -> Dict[str, Any]:
    invoked = time.perf_counter()
    launch.initialize_distributed(config)
    if stop is not None:
        stop.reclaim_signals()
    config_lib.validate(config)
    launch.apply_cpu_loop_unrolling(config)
    launch.apply_host_devices(config)
    run = build_lib.build(config)
    workdir = prepare_workdir(workdir)
    with folder_lock(workdir, "lopt-meta-train", primary=jax.process_index() == 0, all_agree=_all_agree) as lock:
        if stop is not None and lock is not None:
            stop.on_immediate_exit(lock.release)
        return _train(config, run, workdir, lock, stop, invoked, show_progress, max_seconds)


def _train(config, run, workdir, lock, stop, invoked, show_progress, max_seconds) -> Dict[str, Any]:
    """The body of `meta_train` once the workdir is locked."""
    primary = jax.process_index() == 0
    saved_config = workdir / CONFIG_FILE
    config_json = json.loads(config.to_json_best_effort())
    if saved_config.exists() and _run_identity(json.loads(saved_config.read_text())) != _run_identity(config_json):
        raise config_lib.ConfigError(
            f"workdir {workdir} holds a run with a different config ({saved_config}); use a new --workdir"
        )
    if primary:
        write_text_atomic(saved_config, json.dumps(config_json, indent=2))

    trainer = run.trainer
    if primary and show_progress and trainer.parallelism.mode != "none":
        count, kind = trainer.parallelism.num_devices, jax.default_backend()
        print(f"tasks spread over {count} {kind} device(s) with {trainer.parallelism.mode}, "
              f"task_map={config.meta_train.task_map}", file=sys.stderr)
    checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint.keep)
    state = trainer.init(jax.random.key(config.seed))
    start = 0
    watch_signals, stop = stop is not None, stop or StopRequest()
    if checkpointer.latest_step() is not None:
        restored, _ = checkpointer.restore_newest_readable(state)
        state = place_state(restored, trainer.parallelism, trainer.estimator)
        start = stop.last_saved_step = int(state.step)
        if primary or jax.process_count() > 1:
            who = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
            print(f"{who}resumed from checkpoint at meta-step {start} in {workdir}", file=sys.stderr)
    metrics_path = workdir / METRICS_FILE if primary else Path(os.devnull)
    if primary:
        _trim_metrics(metrics_path, start)
    time_path = workdir / TIME_FILE
    seconds_before = _seconds_before(time_path, start)
    recorded = {"seconds": seconds_before}

    def train_seconds() -> float:
        return seconds_before + time.perf_counter() - invoked

    def save(done: int) -> None:
        if not _all_agree(lock is None or lock.still_held()):
            raise FolderLockedError(f"another run took over the lock of {workdir}; stopped without saving")
        checkpointer.save(done, state)
        stop.last_saved_step = done
        recorded["seconds"] = train_seconds()
        if primary:
            write_text_atomic(time_path, json.dumps({"step": done, "seconds": recorded["seconds"]}))
            plot_meta_loss(metrics_path, workdir / PLOT_FILE, f"{config.optimizer.name} in {workdir.name}")

    total = int(config.meta_train.num_steps)
    schedule = config_lib.parse_phases(config.meta_train.phases, total)
    inner_per_step = trainer.inner_steps_per_meta_step
    progress = tqdm(total=total, initial=start, desc="meta-train", unit="step", disable=not (show_progress and primary),
                    dynamic_ncols=True, file=sys.stderr)
    last = {}
    window_start, window_steps = time.perf_counter(), 0
    compile_seconds = None
    done = saved_at = start
    interrupted = False
    board_on = tensorboard_lib.enabled(config.tensorboard.mode)
    histogram_every = int(config.tensorboard.histogram_every)

    def write_histograms(board: tensorboard_lib.EventWriter, at: int) -> None:
        if board_on:  # gathered on every process (meta-params may be sharded), written by process 0
            board.histograms(to_host(state.meta_params), at, "meta_params")

    stop.reclaim_signals()
    try:
        with metrics_path.open("a") as log, tensorboard_lib.EventWriter(
            workdir / tensorboard_lib.FOLDER if board_on and primary else None, purge_step=start + 1 if start else None,
        ) as board:
            if start == 0:
                write_histograms(board, 0)
            for step in range(start, total):
                if max_seconds is not None and _all_agree(train_seconds() >= max_seconds):
                    break
                if watch_signals and _any_process(stop.requested()):
                    interrupted = True
                    break
                began = time.perf_counter()
                phase = config_lib.phase_at(schedule, step)
                state, metrics = trainer.step(state, trainer.phase_mask(state.meta_params, phase))
                window_steps += 1
                if compile_seconds is None:
                    jax.block_until_ready(state)
                    compile_seconds = time.perf_counter() - began
                    window_start, window_steps = time.perf_counter(), 0
                done = step + 1
                if done % config.log_every == 0 or done == total:
                    last = _scalars(metrics)
                    elapsed = time.perf_counter() - window_start
                    rate = inner_per_step * window_steps / elapsed if window_steps and elapsed > 0 else float("nan")
                    last.update(step=done, inner_steps_per_s=rate, time=time.time(), phase=phase)
                    log.write(json.dumps(last) + "\n")
                    log.flush()
                    board.scalars(last, done)
                    progress.set_postfix(meta_loss=f"{last['meta_loss']:.4f}", inner_steps_s=f"{rate:,.0f}")
                    window_start, window_steps = time.perf_counter(), 0
                checkpoint_due = done % config.checkpoint.every == 0 or done == total
                if (done % histogram_every == 0) if histogram_every else checkpoint_due:
                    write_histograms(board, done)
                if checkpoint_due:
                    save(done)
                    saved_at = done
                    board.flush()
                progress.update(1)
            if done != saved_at:
                if not histogram_every:
                    write_histograms(board, done)
                save(done)
    finally:
        progress.close()
        checkpointer.close()

    if interrupted:
        return {"workdir": str(workdir), "meta_steps": done, "saved_step": stop.last_saved_step,
                "interrupted_by": stop.signal_name or "a signal to another process",
                "exit_status": stop.exit_status or exit_status(signal.SIGTERM), "process_index": jax.process_index()}
    meta_params = to_host(state.meta_params)
    export_path = workdir / EXPORT_FILE
    if primary:
        export.save(export_path, run.learned_optimizer, meta_params, provenance(config, done))
    summary = {"workdir": str(workdir), "meta_steps": done, "export": str(export_path),
               "train_seconds": recorded["seconds"], "stopped_early": done < total,
               "compile_seconds": compile_seconds, "last_metrics": last,
               "meta_params_sha256": tree_digest(meta_params), "process_index": jax.process_index(),
               "interrupted_by": None}
    if config.eval.enabled and primary:
        from meta_train.evaluation.report import evaluate_run

        summary["evaluation"] = evaluate_run(config, run, meta_params, workdir)
    return summary


RESUMABLE_CHANGES = {
    "distributed": None, "compile_cache": None, "xla_cpu_loop_unrolling": None, "tensorboard": None,
    "meta_train": ("num_steps", "parallel", "num_devices", "host_devices", "task_map"),
}


def _run_identity(config_json: Dict[str, Any]) -> Dict[str, Any]:
    """The parts of a config that must match for a workdir to be resumed (device layout and length may change)."""
    identity = {k: v for k, v in config_json.items() if RESUMABLE_CHANGES.get(k, ()) is not None}
    identity["meta_train"] = {
        k: v for k, v in config_json.get("meta_train", {}).items() if k not in RESUMABLE_CHANGES["meta_train"]
    }
    # A run saved before meta_train.regularizer existed had it off, as the default is.
    if identity["meta_train"].get("regularizer") == config_lib.base_config().meta_train.regularizer.to_dict():
        del identity["meta_train"]["regularizer"]
    return identity


def export_workdir(workdir: str | os.PathLike, out: Optional[str | os.PathLike] = None) -> Path:
    """Writes the latest checkpoint of the run in `workdir` as an export file (default: workdir/optimizer.lopt)."""
    workdir = Path(workdir).absolute()
    saved_config = workdir / CONFIG_FILE
    if not saved_config.exists():
        raise config_lib.ConfigError(f"{workdir} is not a meta-training workdir (no {CONFIG_FILE})")
    config = config_lib.base_config()
    config.update_from_flattened_dict(_flatten(json.loads(saved_config.read_text())))
    run = build_lib.build(config)
    checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint.keep)
    if checkpointer.latest_step() is None:
        raise CheckpointError(f"no checkpoint in {workdir / 'checkpoints'} to export")
    try:
        state, _ = checkpointer.restore_newest_readable(
            run.trainer.init(jax.random.key(config.seed)), move_aside=False
        )
    finally:
        checkpointer.close()
    return export.save(
        Path(out) if out else workdir / EXPORT_FILE, run.learned_optimizer,
        jax.device_get(state.meta_params), provenance(config, int(state.step)),
    )


# Groups whose keys are the user's (constructor arguments, mixture entries), not base_config's.
FREE_FORM_GROUPS = ("kwargs", "mixture")


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in FREE_FORM_GROUPS:
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, dict):
            flat[f"{prefix}{key}"] = ml_collections.ConfigDict(value)
        else:
            flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return flat
