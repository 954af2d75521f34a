"""Orbax checkpoints of a TrainerState: atomic, keep-the-last-N, restored bit for bit."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or restored (unwritable folder, corrupt or mismatched files)."""


def _leaves_dict(tree: Any) -> dict:
    return {f"{i:05d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


class Checkpointer:
    """Saves and restores TrainerStates under `directory` with orbax's CheckpointManager.

    Orbax writes each checkpoint into a temporary folder and renames it when complete, so a
    checkpoint interrupted mid-write is never listed and never restored.
    """

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        logging.getLogger("absl").setLevel(logging.ERROR)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as err:
            raise CheckpointError(f"cannot create checkpoint folder {self.directory}: {err.strerror or err}") from None

    def save(self, step: int, state: Any) -> None:
        """Writes `state` as checkpoint `step` (a no-op if that step is already saved)."""
        if step in self._manager.all_steps():
            return
        leaves = jax.tree.map(np.asarray, _leaves_dict(state))
        try:
            self._manager.save(int(step), args=ocp.args.StandardSave(leaves), force=True)
            self._manager.wait_until_finished()
        except OSError as err:
            raise CheckpointError(f"cannot write checkpoint {step} in {self.directory}: {err}") from None

    def latest_step(self) -> Optional[int]:
        """Returns the newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def restore(self, like: Any, step: Optional[int] = None) -> Any:
        """Returns checkpoint `step` (default: the latest) with the structure, shapes and dtypes of `like`."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        leaves, treedef = jax.tree.flatten(like)
        abstract = {
            f"{i:05d}": jax.ShapeDtypeStruct(np.shape(leaf), np.asarray(leaf).dtype if not hasattr(leaf, "dtype") else leaf.dtype)
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
        return jax.tree.unflatten(treedef, [restored[f"{i:05d}"] for i in range(len(leaves))])

    def close(self) -> None:
        """Waits for pending writes and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
