"""Files and folders of runs: crash-safe writes (a reader sees the old content or the new, never a torn file),
writable workdirs, and digests that tell bit-identical results apart."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

EXPORT_FILE = "optimizer.lopt"  # what a run exports into its workdir


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` to a temporary file beside `path`, syncs it, and renames it over `path`."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


class WorkdirError(OSError):
    """The workdir cannot be created or written to."""


def prepare_workdir(workdir: str | os.PathLike) -> Path:
    """Creates `workdir` if needed and checks it is writable, before any training starts."""
    path = Path(workdir).absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_probe"):
            pass
    except OSError as err:
        raise WorkdirError(f"workdir {path} is not writable: {err.strerror or err}") from None
    return path


def tree_digest(tree: Any) -> str:
    """Returns a SHA-256 over the bytes, shapes and dtypes of every leaf: equal digests mean bit-identical trees."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        leaf = np.ascontiguousarray(leaf)
        digest.update(f"{leaf.dtype}{leaf.shape}".encode())
        digest.update(leaf.tobytes())
    return digest.hexdigest()
