"""Orbax checkpoints of a TrainerState: atomic, keep-the-last-N, restored bit for bit."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or restored (unwritable folder, corrupt or mismatched files)."""


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


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
        leaves, treedef = jax.tree.flatten(like)
        local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = {
            f"{i:05d}": jax.ShapeDtypeStruct(np.shape(leaf), np.dtype(leaf.dtype), sharding=local)
            for i, leaf in enumerate(leaves)
        }
        try:
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # noqa: BLE001 - orbax raises many types for damaged files
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(
                f"checkpoint {step} in {self.directory} is unreadable or does not match this run's config "
                f"({type(err).__name__}: {message[:200]})"
            ) from None
        for key, spec in abstract.items():
            value = restored[key]
            if value.shape != spec.shape or value.dtype != spec.dtype:
                raise CheckpointError(
                    f"checkpoint {step} in {self.directory} does not match this run: leaf {key} is "
                    f"{value.dtype}{list(value.shape)}, expected {spec.dtype}{list(spec.shape)}"
                )
        return jax.tree.unflatten(treedef, [np.asarray(restored[f"{i:05d}"]) for i in range(len(leaves))])

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        if self.writer:
            self._manager.wait_until_finished()
        self._manager.close()
