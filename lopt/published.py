"""Importing learned optimizers published in google/learned_optimization's format (flax msgpack meta-params).

Three architectures are recognised, each mapped onto an lopt optimizer that computes what
its authors' code computes (tests/test_published_parity.py checks 20 steps against theirs):

| `architecture` | their class | lopt optimizer |
|---|---|---|
| `celo` | amoudgl/celo `Celo` (lstm_hidden_size 64, param_inits 1, train_phase 2) | `celo_lo` |
| `mlp` | learned_optimization `MLPLOpt` (small_fc_lopt) | `small_fc_lopt` |
| `adafac_mlp` | learned_optimization `AdafacMLPLOpt` | `adafac_mlp_lo` |

The file is decoded with `flax.serialization.msgpack_restore`, which builds only dicts,
numbers and numpy arrays: no pickle, no code execution. Hyperparameters that the weights do
not determine (`step_mult`, `exp_mult`, the accumulator decays) take the reference classes'
defaults, which are what the released Celo uses.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from lopt import base
from lopt.celo_lo import FEATURE_GROUPS, CeloLO
from lopt.export import FORMAT_VERSION, ExportError, LoadedOptimizer, save

FORMATS = ("learned_optimization",)
ARCHITECTURES = {"celo": "celo_lo", "mlp": "small_fc_lopt", "adafac_mlp": "adafac_mlp_lo"}
REFERENCES = {
    "celo": "amoudgl/celo celo.optimizers.celo.Celo(lstm_hidden_size=64, param_inits=1, train_phase=2)",
    "mlp": "google/learned_optimization learned_optimizers.mlp_lopt.MLPLOpt",
    "adafac_mlp": "google/learned_optimization learned_optimizers.adafac_mlp_lopt.AdafacMLPLOpt",
}
CELO_LSTM_LAYERS = {"mix": "linear_1", "input": "linear_2", "lstm": "rnn/linear", "controls": "rnn_to_controls",
                    "step_size": "step_size"}
# The authors' scheduler builds a first mixing layer whose output it overwrites: present in the file, unused.
CELO_UNUSED = ("['rnn_params']['linear']['b']", "['rnn_params']['linear']['w']")


class PublishedCheckpointError(ExportError):
    """A file is not a learned_optimization checkpoint, or not one of the requested architecture."""


def _error(path: Any, problem: str) -> PublishedCheckpointError:
    return PublishedCheckpointError(f"{os.fspath(path)}: {problem}".replace("\n", " "))


def _read_bytes(path: Any) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise _error(path, "no such file") from None
    except OSError as exc:
        raise _error(path, f"cannot read file ({exc.strerror or exc})") from None


def read_learned_optimization(path: Any, data: Optional[bytes] = None) -> Dict[str, Any]:
    """Returns the meta-parameter pytree (nested dicts of numpy arrays) of a learned_optimization file (or its `data`)."""
    data = _read_bytes(path) if data is None else data
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as exc:  # msgpack raises several unrelated types for damaged input
        raise _error(path, f"not a learned_optimization checkpoint: its flax msgpack does not decode "
                           f"({type(exc).__name__}: {exc}; {len(data)} bytes, truncated or not such a file)") from None
    if not isinstance(tree, dict) or not tree:
        raise _error(path, f"not a learned_optimization checkpoint: it decodes to a {type(tree).__name__}, "
                           "not a dict of meta-parameters")
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not (isinstance(leaf, np.ndarray) and np.issubdtype(leaf.dtype, np.floating)):
            raise _error(path, f"not a learned_optimization checkpoint: {jax.tree_util.keystr(key_path)} is a "
                               f"{type(leaf).__name__}{getattr(leaf, 'dtype', '')}, not a float array")
    return tree


def detect_architecture(tree: Dict[str, Any]) -> Optional[str]:
    """Returns which supported architecture a checkpoint's top-level keys look like, or None."""
    keys = set(tree)
    if {"ff_mod_stack", "rnn_params"} <= keys:
        return "celo"
    if {"nn", "momentum_decays"} <= keys:
        return "adafac_mlp"
    if any(re.fullmatch(r"mlp/~/linear_\d+", str(k)) for k in keys):
        return "mlp"
    return None


class _Reader:
    """Reads named leaves out of a checkpoint tree and says, in one line, which one is missing or malformed."""

    def __init__(self, tree: Dict[str, Any]):
        self.tree = tree
        self.used: set = set()
        self.sources: Dict[int, str] = {}

    def node(self, *keys: str) -> Dict[str, Any]:
        value = self.tree
        for depth, key in enumerate(keys):
            if not isinstance(value, dict) or key not in value:
                raise ValueError(f"missing key {''.join(f'[{k!r}]' for k in keys[:depth + 1])}")
            value = value[key]
        return value

    def leaf(self, *keys: str, ndim: int) -> np.ndarray:
        value = self.node(*keys)
        where = "".join(f"[{k!r}]" for k in keys)
        if not isinstance(value, np.ndarray) or value.ndim != ndim:
            raise ValueError(f"{where} has shape {getattr(value, 'shape', '(a subtree)')}, expected a {ndim}-d array")
        self.used.add(where)
        array = value.astype(np.float32)
        self.sources[id(array)] = where
        return array

    def indexed(self, *keys: str, pattern: str) -> List[int]:
        node = self.node(*keys)
        if not isinstance(node, dict):
            raise ValueError(f"{''.join(f'[{k!r}]' for k in keys)} is an array, expected a subtree")
        found = sorted(int(m.group(1)) for k in node if (m := re.fullmatch(pattern, str(k))))
        if not found or found != list(range(len(found))):
            where = "".join(f"[{k!r}]" for k in keys)
            raise ValueError(f"{where} should hold keys matching {pattern} numbered from 0, found {sorted(node)}")
        return found

    def unused(self, ignored: Sequence[str] = ()) -> List[str]:
        leaves = jax.tree_util.tree_flatten_with_path(self.tree)[0]
        names = [jax.tree_util.keystr(path) for path, _ in leaves]
        return [n for n in names if n not in self.used and n not in ignored]


def _mlp(reader: _Reader) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    layers = sorted(int(re.fullmatch(r"mlp/~/linear_(\d+)", k).group(1)) for k in reader.tree
                    if re.fullmatch(r"mlp/~/linear_\d+", str(k)))
    if layers != list(range(len(layers))) or len(layers) < 2:
        raise ValueError("missing layers ['mlp/~/linear_0']..['mlp/~/linear_N'] (N >= 1); "
                         f"found keys {sorted(reader.tree)}")
    meta_params = {}
    for i in layers:
        meta_params[f"w{i}"] = reader.leaf(f"mlp/~/linear_{i}", "w", ndim=2)
        meta_params[f"b{i}"] = reader.leaf(f"mlp/~/linear_{i}", "b", ndim=1)
    hidden = tuple(meta_params[f"b{i}"].shape[0] for i in layers[:-1])
    return {"hidden_sizes": hidden}, meta_params


def _adafac_mlp(reader: _Reader) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    layers = reader.indexed("nn", "~", pattern=r"w(\d+)")
    mlp = {}
    for i in layers:
        mlp[f"w{i}"] = reader.leaf("nn", "~", f"w{i}", ndim=2)
        mlp[f"b{i}"] = reader.leaf("nn", "~", f"b{i}", ndim=1)
    decays = {name: reader.leaf(f"{name}_decays", ndim=1) for name in ("momentum", "rms", "adafactor")}
    counts = tuple(decays[name].shape[0] for name in ("momentum", "rms", "adafactor"))
    if counts != (3, 1, 3):
        raise ValueError(f"has {counts[0]} momentum, {counts[1]} rms and {counts[2]} Adafactor decay offsets; "
                         "the decays themselves are not stored, and only AdafacMLPLOpt's defaults (3, 1, 3) are known")
    hidden = tuple(mlp[f"b{i}"].shape[0] for i in layers[:-1])
    return {"hidden_sizes": hidden}, {"mlp": mlp, "decays": decays}


def _celo(reader: _Reader) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    groups = reader.indexed("ff_mod_stack", "~", pattern=r"w0__(\d+)")
    expected = CeloLO().group_sizes
    if len(groups) != len(expected):
        raise ValueError(f"has {len(groups)} first-layer feature groups ['ff_mod_stack']['~']['w0__*'], "
                         f"Celo has {len(expected)}")
    first = [reader.leaf("ff_mod_stack", "~", f"w0__{i}", ndim=3) for i in groups]
    for i, (w, size, name) in enumerate(zip(first, expected, FEATURE_GROUPS)):
        if w.shape[1] != size or w.shape[::2] != first[0].shape[::2]:
            raise ValueError(f"['ff_mod_stack']['~']['w0__{i}'] has shape {w.shape}, expected "
                             f"({first[0].shape[0]}, {size}, {first[0].shape[2]}) for Celo's feature group {name!r}")
    layers = reader.indexed("ff_mod_stack", "~", pattern=r"b(\d+)")
    mlp = {"w0": np.concatenate(first, axis=1)}
    for i in layers:
        if i:
            mlp[f"w{i}"] = reader.leaf("ff_mod_stack", "~", f"w{i}", ndim=3)
        mlp[f"b{i}"] = reader.leaf("ff_mod_stack", "~", f"b{i}", ndim=2)
    initial = {name: reader.leaf("lstm_init_state", name, ndim=2) for name in ("hidden", "cell")}
    if initial["hidden"].shape[0] != 1 or initial["cell"].shape != initial["hidden"].shape:
        raise ValueError(f"['lstm_init_state'] should hold (1, lstm_size) arrays, found {initial['hidden'].shape} "
                         f"and {initial['cell'].shape}")
    scheduler = {"initial_state": {name: value[0] for name, value in initial.items()}}
    for ours, theirs in CELO_LSTM_LAYERS.items():
        scheduler[ours] = {"w": reader.leaf("rnn_params", theirs, "w", ndim=2),
                           "b": reader.leaf("rnn_params", theirs, "b", ndim=1)}
    config = {"hidden_sizes": tuple(mlp[f"b{i}"].shape[1] for i in layers[:-1]),
              "lstm_size": initial["hidden"].shape[1], "param_inits": first[0].shape[0]}
    return config, {"mlp": mlp, "scheduler": scheduler}


_MAPPERS = {"celo": (_celo, CELO_UNUSED), "mlp": (_mlp, ()), "adafac_mlp": (_adafac_mlp, ())}


def _shape_mismatch(optimizer: base.LearnedOptimizer, meta_params: Any, reader: _Reader) -> Optional[str]:
    want = jax.tree_util.tree_flatten_with_path(jax.eval_shape(optimizer.init, jax.random.key(0)))[0]
    have = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(meta_params)[0]}
    for path, spec in want:
        name = jax.tree_util.keystr(path)
        leaf = have.get(name)
        if np.shape(leaf) != spec.shape:
            source = reader.sources.get(id(leaf), "the first-layer groups w0__*")
            return (f"{source} has shape {np.shape(leaf)} where {optimizer.name} expects {spec.shape} "
                    f"(its meta-param {name})")
    return None


def import_learned_optimization(
    path: Any, architecture: Optional[str] = None, *,
    step_mult: Optional[float] = None, exp_mult: Optional[float] = None,
) -> LoadedOptimizer:
    """Reads a learned_optimization meta-params file as a ready-to-use lopt optimizer (architecture None: detected).

    Raises PublishedCheckpointError, in one line naming the file and the mismatch, for a file that is
    not such a checkpoint or not one of `architecture`.
    """
    data = _read_bytes(path)
    tree = read_learned_optimization(path, data)
    detected = detect_architecture(tree)
    architecture = architecture or detected
    if architecture not in ARCHITECTURES:
        supported = ", ".join(ARCHITECTURES)
        raise _error(path, f"unknown architecture {architecture!r}; supported: {supported}" if architecture
                     else f"not a checkpoint of a supported architecture ({supported}); top-level keys: {sorted(tree)}")
    mapper, ignored = _MAPPERS[architecture]
    reader = _Reader(tree)
    hint = "" if detected in (None, architecture) else f" (it looks like a learned_optimization {detected} checkpoint)"
    try:
        config, meta_params = mapper(reader)
        if extra := reader.unused(ignored):
            raise ValueError(f"unexpected keys {', '.join(extra[:4])}{' ...' if len(extra) > 4 else ''}")
        overrides = {k: v for k, v in (("step_mult", step_mult), ("exp_mult", exp_mult)) if v is not None}
        optimizer = base.get(ARCHITECTURES[architecture], **config, **overrides)
        if mismatch := _shape_mismatch(optimizer, meta_params, reader):
            raise ValueError(mismatch)
    except ValueError as exc:
        raise _error(path, f"not a learned_optimization {architecture} checkpoint: {exc}{hint}") from None
    meta_params = jax.tree.map(jnp.asarray, meta_params)
    provenance = {"imported": {
        "format": "learned_optimization", "architecture": architecture, "reference_code": REFERENCES[architecture],
        "source_file": Path(path).name, "source_sha256": hashlib.sha256(data).hexdigest()}}
    return LoadedOptimizer(optimizer, meta_params, provenance, optimizer.name, optimizer.config, FORMAT_VERSION)


def main(argv: Optional[List[str]] = None) -> int:
    """`lopt-import [--architecture A] IN OUT`: converts published meta-params into an lopt export file."""
    parser = argparse.ArgumentParser(
        prog="lopt-import", description="Convert a published learned optimizer's meta-params into an lopt export file "
                                        "(load it with lopt.load, evaluate it with lopt-evaluate --optimizers OUT).")
    parser.add_argument("source", metavar="IN",
                        help="meta-params file, e.g. amoudgl/celo's algoperf/submissions/celo/theta.state")
    parser.add_argument("out", metavar="OUT", help="export file to write (.lopt)")
    parser.add_argument("--format", choices=FORMATS, default=FORMATS[0], help="file format (default %(default)s)")
    parser.add_argument("--architecture", choices=tuple(ARCHITECTURES), default=None,
                        help="what the file holds (default: detected from its keys)")
    for flag in ("--step-mult", "--exp-mult"):
        parser.add_argument(flag, type=float, default=None, help="override the reference's value (1e-3)")
    args = parser.parse_args(argv)
    try:
        loaded = import_learned_optimization(args.source, args.architecture, step_mult=args.step_mult,
                                             exp_mult=args.exp_mult)
        written = save(args.out, loaded.optimizer, loaded.meta_params, loaded.provenance)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    count = sum(int(np.size(x)) for x in jax.tree.leaves(loaded.meta_params))
    print(f"wrote {written}: {loaded.provenance['imported']['architecture']} as lopt optimizer {loaded.name!r} "
          f"({count:,} meta-parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
