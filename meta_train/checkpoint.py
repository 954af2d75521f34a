"""Orbax checkpoints of a TrainerState: atomic, keep-the-last-N, restored bit for bit."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, List, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or restored (unwritable folder, corrupt or mismatched files)."""


CORRUPT_SUFFIX = ".corrupt"


def _is_closed_loop_noise(unraisable: Any) -> bool:
    return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"


def _silence_orbax_failed_restore_noise() -> None:
    """Drops the 'Event loop is closed' tracebacks that a failed orbax restore leaves behind, from now on.

    When one array of a checkpoint cannot be read, orbax closes its event loop while
    tensorstore is still reading the others; each of those reads then reports, as an
    unraisable exception, that it could not call back into the closed loop: pages of
    tracebacks around our one-line message, some before the exception even reaches us, so
    the filter goes in before every restore. Every other unraisable exception still goes to
    the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_loop_noise", False):
        return

    def hook(unraisable: Any) -> None:
        if not _is_closed_loop_noise(unraisable):
            previous(unraisable)

    hook.drops_closed_loop_noise = True
    sys.unraisablehook = hook


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _from_process_zero(value: int) -> int:
    """Returns process 0's `value` on every process."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))


def to_host(tree: Any) -> Any:
    """Returns `tree` as numpy arrays on this host, gathering shards from every process when there are several."""
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree.map(np.asarray, tree)


def _leaves_dict(tree: Any) -> dict:
    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


class Checkpointer:
    """Saves and restores TrainerStates under `directory` with orbax's CheckpointManager.

    Orbax writes each checkpoint into a temporary folder and renames it when complete, so a
    checkpoint interrupted mid-write is never listed and never restored (and leftover
    temporary folders are removed). With several processes, the state is gathered to every
    host, process 0 alone writes, and every process reads.
    """

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        self.writer = jax.process_index() == 0
        logging.getLogger("absl").setLevel(logging.ERROR)
        if self.writer:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise CheckpointError(f"cannot create checkpoint folder {self.directory}: {err.strerror or err}") from None
        _sync("lopt_checkpoint_folder")
        own = jax.process_index()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=False,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=self.writer,
            read_only=not self.writer,
            multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=own, active_processes={own}),
        )
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as err:
            raise CheckpointError(f"cannot open checkpoint folder {self.directory}: {err.strerror or err}") from None

    def save(self, step: int, state: Any) -> None:
        """Writes `state` as checkpoint `step` (a no-op if that step is already saved); every process must call it."""
        leaves = to_host(_leaves_dict(state))
        if self.writer and step not in self._manager.all_steps():
            try:
                self._manager.save(int(step), args=ocp.args.StandardSave(leaves), force=True)
                self._manager.wait_until_finished()
            except OSError as err:
                raise CheckpointError(f"cannot write checkpoint {step} in {self.directory}: {err}") from None
        _sync(f"lopt_checkpoint_saved_{step}")
        if not self.writer:
            self._manager.reload()

    def latest_step(self) -> Optional[int]:
        """Returns the newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def restore(self, like: Any, step: Optional[int] = None) -> Any:
        """Returns checkpoint `step` (default: the latest) with the structure, shapes and dtypes of `like`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        restored, reason = self._read(like, step)
        if restored is None:
            raise CheckpointError(f"checkpoint {step} in {self.directory} {reason}")
        return restored

    def _read(self, like: Any, step: int) -> Tuple[Any, str]:
        """Returns (checkpoint `step` shaped like `like`, '') or (None, why it could not be restored)."""
        leaves, treedef = jax.tree.flatten(like)
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = {
            f"{i:05d}": jax.ShapeDtypeStruct(np.shape(leaf), np.dtype(leaf.dtype), sharding=local)
            for i, leaf in enumerate(leaves)
        }
        _silence_orbax_failed_restore_noise()
        try:
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # noqa: BLE001 - orbax raises many types for damaged files
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            return None, (
                f"is unreadable or does not match this run's config ({type(err).__name__}: {message[:200]})"
            )
        for key, spec in abstract.items():
            value = restored[key]
            if value.shape != spec.shape or value.dtype != spec.dtype:
                return None, (
                    f"does not match this run: leaf {key} is {value.dtype}{list(value.shape)}, "
                    f"expected {spec.dtype}{list(spec.shape)}"
                )
        return jax.tree.unflatten(treedef, [np.asarray(restored[f"{i:05d}"]) for i in range(len(leaves))]), ""

    def restore_newest_readable(self, like: Any, *, move_aside: bool = True) -> Tuple[Any, int]:
        """Returns (state, step) of the newest checkpoint that restores, falling back past unreadable ones.

        Unreadable checkpoints newer than the one restored are renamed `<step>.corrupt` (with
        `move_aside`, by the writing process) and named in one warning line. When none
        restores, nothing is moved and the one-line CheckpointError lists every step tried.
        With several processes, process 0 chooses the step and every process restores it.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        failures: List[Tuple[int, str]] = []
        restored, chosen = None, -1
        if self.writer:
            for step in steps:
                restored, reason = self._read(like, step)
                if restored is not None:
                    chosen = step
                    break
                failures.append((step, reason))
        chosen = _from_process_zero(chosen)
        if chosen < 0:
            tried = "; ".join(f"{step} {reason}" for step, reason in failures) or "see process 0"
            raise CheckpointError(f"no readable checkpoint in {self.directory}; tried {tried}")
        if not self.writer:
            restored = self.restore(like, chosen)
        _sync("lopt_checkpoint_fallback_read")
        if failures:
            self._report_unreadable(failures, chosen, move_aside)
        return restored, chosen

    def _report_unreadable(self, failures: List[Tuple[int, str]], chosen: int, move_aside: bool) -> None:
        """Renames unreadable checkpoints aside (writer only) and prints one warning line."""
        moved = []
        if move_aside and self.writer:
            for step, _ in failures:
                target = self.directory / f"{step}{CORRUPT_SUFFIX}"
                copies = 1
                while target.exists():
                    target = self.directory / f"{step}{CORRUPT_SUFFIX}.{copies}"
                    copies += 1
                try:
                    (self.directory / str(step)).rename(target)
                    moved.append(target.name)
                except OSError as err:
                    raise CheckpointError(
                        f"checkpoint {step} in {self.directory} is unreadable and cannot be moved aside: "
                        f"{err.strerror or err}"
                    ) from None
        _sync("lopt_checkpoint_fallback_moved")
        self._manager.reload()
        if self.writer:
            reasons = "; ".join(f"{step} {reason}" for step, reason in failures)
            where = f"moved to {', '.join(moved)}; " if moved else ""
            print(f"warning: unreadable checkpoint(s) in {self.directory}: {reasons}; {where}"
                  f"using checkpoint {chosen}", file=sys.stderr, flush=True)

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        if self.writer:
            self._manager.wait_until_finished()
        self._manager.close()
