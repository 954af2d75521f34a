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

This module only reads: it imports neither JAX nor anything else from lopt, so PyTorch (lopt.torch)
can read export files without JAX. Writing and rebuilding optimizers is lopt.export.
"""

import hashlib
import hmac
import json
import math
import os
import struct
import sys
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Tuple, Union

import ml_dtypes
import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

MAGIC = b"LOPTEXP\0"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

# Optimizer names earlier versions of lopt wrote, mapped to the names they have now; `read`
# returns the current name, so files written before a rename load unchanged and without a warning.
LEGACY_OPTIMIZER_NAMES: Dict[str, str] = {"mlp": "small_fc_lopt"}

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


def _error(path: Any, problem: str) -> ExportError:
    return ExportError(f"{os.fspath(path)}: {problem}".replace("\r", "\\r").replace("\n", "\\n"))


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
    """Reads and fully validates an export file, returning meta-params as numpy arrays and the optimizer's
    current name (a legacy name stored by an earlier version is mapped by LEGACY_OPTIMIZER_NAMES)."""
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
    name = LEGACY_OPTIMIZER_NAMES.get(name, name)
    return Exported(name, config, meta_params, header["provenance"], version)


__all__ = ["ExportError", "Exported", "LEGACY_OPTIMIZER_NAMES", "PathLike", "read", "MAGIC", "FORMAT_VERSION", "SUPPORTED_VERSIONS"]
