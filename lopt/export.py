"""Saving trained learned optimizers to export files and loading them back as optax transformations.

The byte layout and the JAX-free reader are in lopt.export_format; its names are re-exported here.
Reading never deserialises objects, evaluates or imports anything named by the file.
"""

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopt import base
from lopt.export_format import (_ALIGN, _DTYPES, _MAX_DEPTH, _MAX_HEADER_BYTES, _PREFIX, FORMAT_VERSION, MAGIC,
                                SUPPORTED_VERSIONS, ExportError, Exported, PathLike, _error, read)


@dataclasses.dataclass(frozen=True)
class LoadedOptimizer:
    """A learned optimizer rebuilt from an export file, together with its meta-params."""

    optimizer: base.LearnedOptimizer
    meta_params: Any
    provenance: Dict[str, Any]
    name: str
    config: Dict[str, Any]
    format_version: int

    def transformation(
            self, num_steps: base.NumSteps = None) -> optax.GradientTransformationExtraArgs:
        """Returns the trained optimizer as an optax transformation."""
        return self.optimizer.transformation(self.meta_params, num_steps=num_steps)


def _json_value(value: Any, where: str, depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise ExportError(f"{where} is nested more than {_MAX_DEPTH} levels deep")
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        value = value.item()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise ExportError(f"{where} is {value}, which JSON cannot represent")
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise ExportError(f"{where} has a non-string key {key!r}")
            out[key] = _json_value(v, f"{where}[{key!r}]", depth + 1)
        return out
    raise ExportError(f"{where} is a {type(value).__name__}, which is not JSON-serialisable")


def _encode_tree(tree: Any, chunks: List[np.ndarray], cursor: List[int], where: str,
                 depth: int = 0) -> Dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise ExportError(f"meta_params are nested more than {_MAX_DEPTH} levels deep")
    if isinstance(tree, dict):
        items = []
        for key, value in tree.items():
            if not isinstance(key, str):
                raise ExportError(f"meta_params{where} has a non-string key {key!r}")
            items.append([key, _encode_tree(value, chunks, cursor, f"{where}[{key!r}]", depth + 1)])
        return {"type": "dict", "items": items}
    if type(tree) in (list, tuple):
        items = [_encode_tree(v, chunks, cursor, f"{where}[{i}]", depth + 1)
                 for i, v in enumerate(tree)]
        return {"type": type(tree).__name__, "items": items}
    if not isinstance(tree, (np.ndarray, np.generic, jax.Array, bool, int, float)):
        raise ExportError(f"meta_params{where} is a {type(tree).__name__}; meta-params must be "
                          "nested dicts, lists and tuples of arrays")
    try:
        array = np.asarray(tree)
    except Exception as exc:
        raise ExportError(f"meta_params{where} could not be converted to a numpy array ({exc})")
    if array.dtype.name not in _DTYPES:
        raise ExportError(f"meta_params{where} has unsupported dtype {array.dtype}")
    array = array if array.flags.c_contiguous else array.copy(order="C")
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and sys.byteorder == "big"):
        array = array.byteswap()
    offset = -(-cursor[0] // _ALIGN) * _ALIGN
    chunks.append(np.zeros(offset - cursor[0], np.uint8))
    chunks.append(array.reshape(-1).view(np.uint8))
    cursor[0] = offset + array.nbytes
    return {"type": "array", "dtype": array.dtype.name, "shape": list(array.shape),
            "offset": offset, "nbytes": array.nbytes}


def _write_atomically(path: Path, chunks: List[Any]) -> None:
    temp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.writelines(chunks)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save(path: PathLike, optimizer: base.LearnedOptimizer, meta_params: Any,
         provenance: Optional[Dict[str, Any]] = None) -> Path:
    """Writes `optimizer` and its trained `meta_params` to one export file, atomically."""
    path = Path(path)
    try:
        if not isinstance(optimizer, base.LearnedOptimizer):
            raise ExportError(f"expected a LearnedOptimizer, got a {type(optimizer).__name__}")
        if base._REGISTRY.get(optimizer.name) is not type(optimizer):
            raise ExportError(f"optimizer class {type(optimizer).__name__} is not registered under "
                              f"its name {optimizer.name!r}, so the file could not be loaded")
        if provenance is not None and not isinstance(provenance, dict):
            raise ExportError(f"provenance must be a dict, got a {type(provenance).__name__}")
        config = _json_value(optimizer.config, "optimizer config")
        chunks, cursor = [], [0]
        header = {"optimizer": {"name": optimizer.name, "config": config},
                  "meta_params": _encode_tree(meta_params, chunks, cursor, ""),
                  "provenance": _json_value(provenance or {}, "provenance")}
        encoded = json.dumps(header, allow_nan=False, separators=(",", ":")).encode("ascii")
    except RecursionError:
        raise _error(path, "cannot save: values are nested too deeply") from None
    except ExportError as exc:
        raise _error(path, f"cannot save: {exc}") from None
    encoded += b" " * (-(_PREFIX.size + len(encoded)) % _ALIGN)
    if len(encoded) > _MAX_HEADER_BYTES:
        raise _error(path, f"cannot save: header of {len(encoded)} bytes exceeds "
                           f"the {_MAX_HEADER_BYTES}-byte limit")
    body = [_PREFIX.pack(MAGIC, FORMAT_VERSION, len(encoded)), encoded, *chunks]
    digest = hashlib.sha256()
    for chunk in body:
        digest.update(chunk)
    _write_atomically(path, body + [digest.digest()])
    return path



def _leaf_shapes(tree: Any) -> Dict[str, Tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in leaves}


def _init_mismatch(optimizer: base.LearnedOptimizer, meta_params: Any) -> Optional[str]:
    try:
        want = _leaf_shapes(jax.eval_shape(optimizer.init, jax.random.key(0)))
    except Exception:
        return None
    have = _leaf_shapes(meta_params)
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            return (f"meta-params do not match optimizer {optimizer.name!r}: leaf {key} has "
                    f"shape {have.get(key, 'missing')}, expected {want.get(key, 'no such leaf')}")
    return None


def load(path: PathLike, **config_overrides: Any) -> LoadedOptimizer:
    """Reads an export file and rebuilds its optimizer from the registry, ready to use.

    `config_overrides` replace stored constructor arguments that change how the update is computed,
    not what it computes (say `concurrent_chunks=2` for small_fc_lopt); the meta-parameters must
    still fit the rebuilt optimizer.
    """
    exported = read(path)  # which maps legacy optimizer names to current ones
    if exported.name not in base.registered_names():
        raise _error(path, f"optimizer {exported.name!r} is not registered in this version of "
                           f"lopt (registered: {', '.join(base.registered_names()) or 'none'})")
    config = {**exported.config, **config_overrides}
    try:
        optimizer = base.get(exported.name, **config)
    except Exception as exc:
        source = f"stored config with overrides {config_overrides}" if config_overrides else "stored config"
        raise _error(path, f"cannot rebuild optimizer {exported.name!r} from its {source} "
                           f"({type(exc).__name__}: {exc})") from None
    if mismatch := _init_mismatch(optimizer, exported.meta_params):
        raise _error(path, mismatch)
    meta_params = jax.tree.map(jnp.asarray, exported.meta_params)
    return LoadedOptimizer(optimizer, meta_params, exported.provenance, exported.name,
                           config, exported.format_version)


__all__ = ["ExportError", "Exported", "LoadedOptimizer", "save", "read", "load",
           "MAGIC", "FORMAT_VERSION", "SUPPORTED_VERSIONS"]
