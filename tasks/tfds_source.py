"""Reading TFDS datasets through `tfds.data_source` (ArrayRecord; works without tensorflow).

Only prepared data is read unless `download=True` is passed: an offline download hangs for
minutes, so a dataset that is not in the TFDS data folder is a one-line TaskError at once.
The folder is `tfds_data_dir` if given, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`
(TFDS's own default). Prepare data elsewhere with
`tfds build NAME --file_format=array_record` and copy the folder over.

TFDS splits map onto ours as train -> train, validation -> valid, test -> test; a split the
dataset lacks is carved deterministically out of train (10% each).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tasks.base import TaskError

PREFIX = "tfds:"
TFDS_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
IMAGE_KEY, LABEL_KEY, TEXT_KEY = "image", "label", "text"
_CHUNK = 1024
_CARVE_FRACTION, _CARVE_SEED = 0.1, 0


def is_tfds_name(name: str) -> bool:
    """Returns whether a dataset name selects the TFDS source (`tfds:NAME[/CONFIG][:VERSION]`)."""
    return isinstance(name, str) and name.startswith(PREFIX)


def strip_prefix(name: str) -> str:
    """Returns the TFDS dataset name in `tfds:NAME`, or raises TaskError if it is empty."""
    bare = name[len(PREFIX):] if is_tfds_name(name) else name
    if not bare:
        raise TaskError(f"dataset {name!r} names no TFDS dataset; write e.g. 'tfds:mnist'")
    return bare


def open_split(name: str, split: str, data_dir: Optional[str] = None, download: bool = False) -> Sequence[Any]:
    """Returns the random-access data source of TFDS `name`, TFDS split `split`; one-line TaskError if unavailable."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise TaskError(f"dataset 'tfds:{name}' needs tensorflow-datasets: pip install \"lopt[tfds]\"") from None
    where = data_dir or "the TFDS default folder ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=download)
    except Exception as error:  # noqa: BLE001 - tfds raises many types; all mean "not usable here"
        first = (str(error).splitlines() or [type(error).__name__])[0][:200]
        hint = "" if download else "; prepare it with `tfds build --file_format=array_record` or pass download=True"
        raise TaskError(
            f"TFDS dataset {name!r} split {split!r} is not available in {where} (download={download}){hint} "
            f"[{type(error).__name__}: {first}]"
        ) from None


def read_examples(source: Sequence[Any], indices: Sequence[int]) -> List[Dict[str, Any]]:
    """Returns the decoded examples at `indices`, read in chunks with `__getitems__` where available."""
    examples: List[Dict[str, Any]] = []
    indices = [int(i) for i in indices]
    batched = getattr(source, "__getitems__", None)
    for start in range(0, len(indices), _CHUNK):
        chunk = indices[start: start + _CHUNK]
        if batched is not None:
            try:
                examples.extend(batched(chunk))
                continue
            except (TypeError, NotImplementedError):  # e.g. tfds.testing.mock_data's __getitems__
                batched = None
        examples.extend(source[i] for i in chunk)
    return examples


def _open_splits(name: str, data_dir: Optional[str], download: bool) -> Dict[str, Optional[Sequence[Any]]]:
    sources: Dict[str, Optional[Sequence[Any]]] = {"train": open_split(name, "train", data_dir, download)}
    for ours in ("valid", "test"):
        try:
            sources[ours] = open_split(name, TFDS_SPLITS[ours], data_dir, download)
        except TaskError:
            sources[ours] = None
    return sources


def _split_indices(
    sources: Dict[str, Optional[Sequence[Any]]], max_examples: Optional[int]
) -> Dict[str, Tuple[str, np.ndarray]]:
    num_train = len(sources["train"])
    missing = [s for s in ("valid", "test") if sources[s] is None]
    order = np.random.default_rng(_CARVE_SEED).permutation(num_train)
    carve = int(num_train * _CARVE_FRACTION)
    plan, start = {}, 0
    for split in missing:
        plan[split] = ("train", np.sort(order[start: start + carve]))
        start += carve
    plan["train"] = ("train", np.sort(order[start:]))
    for split in ("valid", "test"):
        if split not in plan:
            plan[split] = (split, np.arange(len(sources[split])))
    if max_examples is not None:
        rng = np.random.default_rng(_CARVE_SEED)
        plan = {s: (src, np.sort(rng.permutation(idx)[:max_examples]) if len(idx) > max_examples else idx)
                for s, (src, idx) in plan.items()}
    for split, (_, idx) in plan.items():
        if len(idx) == 0:
            raise TaskError(f"TFDS dataset {_name_of(sources)!r} has no examples for split {split!r}")
    return plan


def _name_of(sources: Dict[str, Optional[Sequence[Any]]]) -> str:
    info = getattr(sources["train"], "dataset_info", None)
    return getattr(info, "name", "?")


def read_image_classification(
    name: str, data_dir: Optional[str] = None, download: bool = False, max_examples: Optional[int] = None
) -> Tuple[Dict[str, Tuple[np.ndarray, np.ndarray]], int]:
    """Reads an (image, label) TFDS dataset into uint8 (N, H, W, C) images and int32 labels per split."""
    sources = _open_splits(name, data_dir, download)
    num_classes = _num_classes(sources["train"])
    splits = {}
    for split, (source_split, indices) in _split_indices(sources, max_examples).items():
        examples = read_examples(sources[source_split], indices)
        missing = [k for k in (IMAGE_KEY, LABEL_KEY) if k not in examples[0]]
        if missing:
            raise TaskError(f"TFDS dataset {name!r} has no feature(s) {missing}; found {sorted(examples[0])}")
        images = np.stack([np.asarray(e[IMAGE_KEY]) for e in examples])
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.dtype != np.uint8:
            found = f"{images.dtype} {images.shape[1:]}"
            raise TaskError(f"TFDS dataset {name!r}: expected uint8 images (H, W, C), got {found}")
        labels = np.asarray([int(e[LABEL_KEY]) for e in examples], np.int32)
        splits[split] = (images, labels)
    top = max(int(y.max(initial=0)) for _, y in splits.values())
    return splits, max(num_classes, top + 1)


def _num_classes(source: Sequence[Any]) -> int:
    info = getattr(source, "dataset_info", None)
    try:
        return int(info.features[LABEL_KEY].num_classes)
    except (AttributeError, KeyError, TypeError):
        return 0


def read_text(
    name: str, data_dir: Optional[str] = None, download: bool = False, max_chars: Optional[int] = None
) -> Dict[str, str]:
    """Reads the `text` feature of every split of a TFDS dataset, examples joined by newlines."""
    sources = _open_splits(name, data_dir, download)
    small_cap = None if max_chars is None else max(max_chars // 10, 1)
    missing = [split for split in ("valid", "test") if sources[split] is None]
    train = _join_text(sources["train"], name, max_chars)
    carve = int(len(train) * _CARVE_FRACTION)
    texts = {"train": train[: len(train) - carve * len(missing)]}
    for i, split in enumerate(missing):
        start = len(texts["train"]) + i * carve
        texts[split] = train[start: start + carve]
    for split in ("valid", "test"):
        if split not in texts:
            texts[split] = _join_text(sources[split], name, small_cap)
    return texts


def _decode(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _join_text(source: Sequence[Any], name: str, max_chars: Optional[int]) -> str:
    pieces, total = [], 0
    for start in range(0, len(source), _CHUNK):
        for example in read_examples(source, range(start, min(start + _CHUNK, len(source)))):
            if TEXT_KEY not in example:
                raise TaskError(f"TFDS dataset {name!r} has no {TEXT_KEY!r} feature; found {sorted(example)}")
            pieces.append(_decode(example[TEXT_KEY]))
            total += len(pieces[-1]) + 1
            if max_chars is not None and total >= max_chars:
                return "\n".join(pieces)[:max_chars]
    return "\n".join(pieces)

