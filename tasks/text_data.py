"""Character-level text held on device as uint8 token streams, with windows drawn inside jit.

Sources, behind the one `load_text` interface:
- `tiny_shakespeare`: the local file `<data_dir>/tinyshakespeare/input.txt` (data_dir= or
  $LOPT_DATA_DIR);
- `sklearn_docs`: the dataset descriptions bundled with scikit-learn (about 43 KB of
  English; needs no files, for quick tests);
- `file:PATH`: any UTF-8 text file (a relative PATH is looked up in the data folder);
- `tfds:NAME`: the `text` feature of a TFDS dataset, e.g. `tfds:tiny_shakespeare` or
  `tfds:lm1b`, read with `tfds.data_source` (see tasks/tfds_source.py).

Local text is split contiguously: the first 90% of characters train, the next 5% valid, the
last 5% test. TFDS datasets keep their own splits (one they lack is carved from the end of
train, 10% each). `max_chars` caps the train text (valid and test get a tenth of it each) so
that large corpora such as lm1b stay small on device.

Tokenisers: `char` uses the sorted distinct characters of the text as the vocabulary (at
most 256, so tokens fit in uint8); `byte` uses UTF-8 bytes (vocabulary 256); `auto` picks
`char` when the text has at most 256 distinct characters, else `byte`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tasks import tfds_source
from tasks.base import SPLITS, TaskError, check_split
from tasks.datasets import resolve_data_dir

Array = jax.Array
TOKENIZERS = ("auto", "char", "byte")
TEXT_DATASETS = ("tiny_shakespeare", "sklearn_docs", "file:PATH", "tfds:NAME")
_LOCAL_FILES = {"tiny_shakespeare": Path("tinyshakespeare") / "input.txt"}
_FRACTIONS = (0.9, 0.05)


class TextDataset:
    """Per-split uint8 token streams `tokens[split]` (the pytree leaves) and a static vocabulary.

    `vocab` is the string of characters whose positions are the token ids, or None for bytes.
    """

    def __init__(self, tokens: Mapping[str, Array], *, name: str, vocab: Optional[str]):
        if set(tokens) != set(SPLITS):
            raise TaskError(f"text dataset {name!r} needs splits {SPLITS}, got {sorted(tokens)}")
        for split in SPLITS:
            chex.assert_rank(tokens[split], 1)
        self.tokens = dict(tokens)
        self.name = name
        self.vocab = vocab

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids: len(vocab), or 256 for bytes."""
        return 256 if self.vocab is None else len(self.vocab)

    def num_tokens(self, split: str) -> int:
        """Number of tokens in `split`."""
        return int(self.tokens[check_split(split)].shape[0])

    def sample(self, key: Array, split: str, batch_size: int, length: int) -> Array:
        """Draws `batch_size` windows of `length` consecutive tokens uniformly (in-jit): int32 [batch, length]."""
        stream = self.tokens[check_split(split)]
        if stream.shape[0] < length:
            raise TaskError(f"text {self.name!r} split {split!r} has {stream.shape[0]} tokens, fewer than {length}")
        starts = jax.random.randint(key, (batch_size,), 0, stream.shape[0] - length + 1)
        windows = jax.vmap(lambda s: jax.lax.dynamic_slice(stream, (s,), (length,)))(starts)
        return windows.astype(jnp.int32)

    def decode(self, ids: np.ndarray) -> str:
        """Returns the text of token ids (for inspecting samples)."""
        ids = np.asarray(ids).astype(np.int64).reshape(-1)
        if self.vocab is None:
            return bytes(ids.astype(np.uint8).tolist()).decode("utf-8", errors="replace")
        return "".join(self.vocab[i] for i in ids)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.num_tokens(s)}" for s in SPLITS)
        return f"TextDataset({self.name!r}, vocab_size={self.vocab_size}, {sizes})"

    def _flatten(self):
        return [self.tokens], (self.name, self.vocab)

    def _flatten_with_keys(self):
        return [(jax.tree_util.GetAttrKey("tokens"), self.tokens)], (self.name, self.vocab)

    @classmethod
    def _unflatten(cls, aux, children):
        obj = object.__new__(cls)
        (obj.tokens,), (obj.name, obj.vocab) = children, aux
        return obj


jax.tree_util.register_pytree_with_keys(
    TextDataset, TextDataset._flatten_with_keys, TextDataset._unflatten, TextDataset._flatten
)


def load_text(
    name: str,
    data_dir: Optional[str] = None,
    *,
    tokenizer: str = "auto",
    max_chars: Optional[int] = None,
    tfds_data_dir: Optional[str] = None,
    download: bool = False,
) -> TextDataset:
    """Loads text `name` (see the module docstring) as uint8 token streams on the device."""
    if tokenizer not in TOKENIZERS:
        raise TaskError(f"unknown tokenizer {tokenizer!r}; expected one of {', '.join(TOKENIZERS)}")
    if max_chars is not None and max_chars < 1:
        raise TaskError(f"max_chars must be a positive integer, got {max_chars}")
    if tfds_source.is_tfds_name(name):
        texts = tfds_source.read_text(tfds_source.strip_prefix(name), tfds_data_dir, download, max_chars)
    else:
        texts = _split_local(_read_local(name, data_dir), max_chars)
    ids, vocab = tokenize(texts, tokenizer, name)
    return TextDataset({s: jnp.asarray(v) for s, v in ids.items()}, name=name, vocab=vocab)


def tokenize(
    texts: Mapping[str, str], tokenizer: str, name: str = "text"
) -> Tuple[Dict[str, np.ndarray], Optional[str]]:
    """Returns uint8 token ids per split and the vocabulary (None for bytes) of `texts`."""
    chars = sorted(set("".join(texts.values())))
    if tokenizer == "char" and len(chars) > 256:
        raise TaskError(f"text {name!r} has {len(chars)} distinct characters (> 256); use tokenizer='byte'")
    if tokenizer == "byte" or (tokenizer == "auto" and len(chars) > 256):
        return {s: np.frombuffer(t.encode("utf-8"), np.uint8).copy() for s, t in texts.items()}, None
    lookup = np.zeros(max(map(ord, chars), default=0) + 1, np.uint8)
    lookup[[ord(c) for c in chars]] = np.arange(len(chars), dtype=np.uint8)
    codes = {s: np.frombuffer(t.encode("utf-32-le"), np.uint32) for s, t in texts.items()}
    return {s: lookup[c] for s, c in codes.items()}, "".join(chars)


def _split_local(text: str, max_chars: Optional[int]) -> Dict[str, str]:
    train_end = int(len(text) * _FRACTIONS[0])
    valid_end = train_end + int(len(text) * _FRACTIONS[1])
    splits = {"train": text[:train_end], "valid": text[train_end:valid_end], "test": text[valid_end:]}
    if max_chars is not None:
        splits = {s: t[: max_chars if s == "train" else max(max_chars // 10, 1)] for s, t in splits.items()}
    return splits


def _read_local(name: str, data_dir: Optional[str]) -> str:
    if name == "sklearn_docs":
        return _sklearn_docs()
    if name in _LOCAL_FILES:
        path = resolve_data_dir(data_dir, str(_LOCAL_FILES[name].parent)) / _LOCAL_FILES[name]
    elif name.startswith("file:") and len(name) > 5:
        path = Path(name[5:]).expanduser()
        if not path.is_absolute():
            path = resolve_data_dir(data_dir, name[5:]) / path
    else:
        raise TaskError(f"unknown text dataset {name!r}; expected one of {', '.join(TEXT_DATASETS)}")
    return _read_file(str(path), name)


@functools.lru_cache(maxsize=4)
def _read_file(path: str, name: str) -> str:
    if not Path(path).is_file():
        raise TaskError(f"text dataset {name!r}: missing file {path}; pass data_dir=... or set LOPT_DATA_DIR")
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TaskError(f"text dataset {name!r}: cannot read {path} as UTF-8 text ({type(error).__name__})") from None


@functools.lru_cache(maxsize=1)
def _sklearn_docs() -> str:
    import sklearn

    folder = Path(sklearn.__file__).parent / "datasets" / "descr"
    files = sorted(folder.glob("*.rst"))
    if not files:
        raise TaskError(f"text dataset 'sklearn_docs': no dataset descriptions found in {folder}")
    return "\n".join(f.read_text(encoding="utf-8") for f in files)
