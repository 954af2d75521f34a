"""The export file format: one self-describing, checksummed file per trained learned optimizer.

Byte layout (all integers little-endian):

    offset      size  field
    0           8     magic b"LOPTEXP\\0"
    8           4     format version, uint32 (currently 1)
    12          8     header length H, uint64
    20          H     header: UTF-8 JSON object, space-padded so that 20 + H is a multiple of 64
    20 + H      P     payload: raw little-endian array bytes at the header's offsets, each
                      64-byte aligned relative to the payload start, zero bytes between
    20 + H + P  32    SHA-256 of every byte before it

The header is {"optimizer": {"name", "config"}, "meta_params": node, "provenance": {...}}
where a node is {"type": "dict", "items": [[key, node], ...]}, {"type": "list"|"tuple",
"items": [node, ...]} or {"type": "array", "dtype", "shape", "offset", "nbytes"}.
Reading never deserialises objects, evaluates or imports anything named by the file.
"""

import contextlib
import dataclasses
import hashlib
import hmac
import inspect
import json
import math
import os
import secrets
import struct
import sys
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax

from lopt import base

PathLike = Union[str, "os.PathLike[str]"]

MAGIC = b"LOPTEXP\0"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

_PREFIX = struct.Struct("<8sIQ")
_DIGEST_SIZE = 32
_ALIGN = 64
_MAX_HEADER_BYTES = 64 * 2**20
_MAX_DEPTH = 64
_MAX_NDIM = 32
_MAX_ELEMENTS = 2**48

_DTYPES: Dict[str, np.dtype] = {n: np.dtype(n) for n in (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
    "float32", "float64")}
_DTYPES["bfloat16"] = np.dtype(ml_dtypes.bfloat16)


class ExportError(ValueError):
    """An optimizer could not be exported, or an export file is missing, corrupt or unsupported."""


class Exported(NamedTuple):
    """The validated contents of an export file, with meta-params as numpy arrays."""

    name: str
    config: Dict[str, Any]
    meta_params: Any
    provenance: Dict[str, Any]
    format_version: int


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
        return self.optimizer.optimizer(self.meta_params, num_steps=num_steps)


def _error(path: Any, problem: str) -> ExportError:
    return ExportError(f"{os.fspath(path)}: {problem}".replace("\r", "\\r").replace("\n", "\\n"))


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


def _constructor_kwargs(optimizer: base.LearnedOptimizer) -> Dict[str, Any]:
    config = optimizer.config
    params = inspect.signature(type(optimizer).__init__).parameters.values()
    for param in params:
        if param.kind is inspect.Parameter.VAR_POSITIONAL and config.pop(param.name, ()):
            raise ExportError(f"optimizer {optimizer.name!r} was built with extra positional "
                              f"arguments (*{param.name}), which cannot be rebuilt by keyword")
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            config.update(config.pop(param.name, {}))
    return config


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
        config = _json_value(_constructor_kwargs(optimizer), "optimizer config")
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


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"non-finite number {text}")
    return value


def _unique_pairs(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return out


def _expect_keys(obj: Any, keys: Tuple[str, ...], where: str) -> None:
    if not isinstance(obj, dict):
        raise ExportError(f"{where} must be a JSON object, got {type(obj).__name__}")
    if set(obj) != set(keys):
        raise ExportError(f"{where} must have exactly the fields {', '.join(keys)}; "
                          f"found {', '.join(sorted(obj)) or '(none)'}")


def _decode_array(node: Dict[str, Any], buffer: bytearray, start: int, end: int, where: str,
                  spans: List[Tuple[int, int, str]]) -> np.ndarray:
    _expect_keys(node, ("type", "dtype", "shape", "offset", "nbytes"), f"array {where}")
    dtype = _DTYPES.get(node["dtype"]) if isinstance(node["dtype"], str) else None
    if dtype is None:
        raise ExportError(f"array {where} has unsupported dtype {node['dtype']!r}; "
                          f"supported: {', '.join(_DTYPES)}")
    shape, offset, nbytes = node["shape"], node["offset"], node["nbytes"]
    if not (isinstance(shape, list) and len(shape) <= _MAX_NDIM
            and all(type(d) is int and d >= 0 for d in shape)
            and math.prod(max(d, 1) for d in shape) <= _MAX_ELEMENTS):
        raise ExportError(f"array {where} has an invalid or absurd shape {shape!r}")
    if not (type(offset) is int and type(nbytes) is int and offset >= 0 and nbytes >= 0):
        raise ExportError(f"array {where} has an invalid offset or length")
    if offset + nbytes > end - start:
        raise ExportError(f"array {where} spans bytes {offset}..{offset + nbytes} of a "
                          f"{end - start}-byte payload")
    size = math.prod(shape)
    if size * dtype.itemsize != nbytes:
        raise ExportError(f"array {where} of shape {tuple(shape)} and dtype {dtype.name} needs "
                          f"{size * dtype.itemsize} bytes, header says {nbytes}")
    if nbytes:
        spans.append((offset, offset + nbytes, where))
    array = np.frombuffer(buffer, dtype, count=size, offset=start + offset).reshape(tuple(shape))
    return array.byteswap() if sys.byteorder == "big" else array


def _decode_tree(node: Any, buffer: bytearray, start: int, end: int, where: str,
                 spans: List[Tuple[int, int, str]], depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise ExportError(f"meta_params are nested more than {_MAX_DEPTH} levels deep")
    label = f"meta_params node {where or '(root)'}"
    kind = node.get("type") if isinstance(node, dict) else None
    if kind == "array":
        return _decode_array(node, buffer, start, end, where or "(root)", spans)
    if kind not in ("dict", "list", "tuple"):
        raise ExportError(f"{label} is not a dict, list, tuple or array node")
    _expect_keys(node, ("type", "items"), label)
    if not isinstance(node["items"], list):
        raise ExportError(f"{label} has non-list items")
    if kind != "dict":
        children = [_decode_tree(v, buffer, start, end, f"{where}[{i}]", spans, depth + 1)
                    for i, v in enumerate(node["items"])]
        return children if kind == "list" else tuple(children)
    out: Dict[str, Any] = {}
    for item in node["items"]:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
            raise ExportError(f"{label} has a malformed dict item")
        if item[0] in out:
            raise ExportError(f"{label} repeats key {item[0]!r}")
        out[item[0]] = _decode_tree(item[1], buffer, start, end, f"{where}[{item[0]!r}]", spans,
                                    depth + 1)
    return out


def _read_bytes(path: Path) -> bytearray:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _PREFIX.size + _DIGEST_SIZE:
                raise _error(path, f"file is truncated or not an lopt export ({size} bytes)")
            if f.read(len(MAGIC)) != MAGIC:
                raise _error(path, "not an lopt export file (bad magic bytes)")
            buffer = bytearray(size)
            f.seek(0)
            if f.readinto(buffer) != size:
                raise _error(path, "file changed size while being read")
            return buffer
    except FileNotFoundError:
        raise _error(path, "no such file") from None
    except OSError as exc:
        raise _error(path, f"cannot read file ({exc.strerror or exc})") from None


def read(path: PathLike) -> Exported:
    """Reads and fully validates an export file, returning meta-params as numpy arrays."""
    path = Path(path)
    buffer = _read_bytes(path)
    _, version, header_len = _PREFIX.unpack_from(buffer)
    if version not in SUPPORTED_VERSIONS:
        raise _error(path, f"unsupported format version {version}; this lopt reads version(s) "
                           f"{', '.join(map(str, SUPPORTED_VERSIONS))}")
    body_end = len(buffer) - _DIGEST_SIZE
    if header_len > _MAX_HEADER_BYTES or _PREFIX.size + header_len > body_end:
        raise _error(path, f"header length {header_len} does not fit a file of "
                           f"{len(buffer)} bytes (truncated or corrupt)")
    view = memoryview(buffer)
    if not hmac.compare_digest(hashlib.sha256(view[:body_end]).digest(), bytes(view[body_end:])):
        raise _error(path, "checksum mismatch: the file is corrupt or truncated")
    start = _PREFIX.size + header_len
    try:
        header = json.loads(bytes(view[_PREFIX.size:start]).decode("utf-8"),
                            object_pairs_hook=_unique_pairs, parse_constant=_finite_float,
                            parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise _error(path, f"header is not valid JSON ({type(exc).__name__}: {exc})") from None
    try:
        _expect_keys(header, ("optimizer", "meta_params", "provenance"), "header")
        _expect_keys(header["optimizer"], ("name", "config"), "header field 'optimizer'")
        name, config = header["optimizer"]["name"], header["optimizer"]["config"]
        if not isinstance(name, str) or not name:
            raise ExportError("optimizer name must be a non-empty string")
        for field, value in (("optimizer config", config), ("provenance", header["provenance"])):
            if not isinstance(value, dict):
                raise ExportError(f"{field} must be a JSON object")
        spans: List[Tuple[int, int, str]] = []
        meta_params = _decode_tree(header["meta_params"], buffer, start, body_end, "", spans)
        spans.sort()
        for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
            if begin < end:
                raise ExportError(f"arrays {first} and {second} overlap in the payload")
    except ExportError as exc:
        raise _error(path, str(exc)) from None
    except RecursionError:
        raise _error(path, "header is nested too deeply") from None
    return Exported(name, config, meta_params, header["provenance"], version)


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
    exported = read(path)
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
