"""In-memory datasets held on device, with batches drawn inside jit, and their loaders.

Images are stored as uint8 (N, H, W, C) and standardised per channel inside jit; tabular
features are stored as float32 (N, D) and standardised per feature. The standardisation
statistics come from the train split. Loaded numpy arrays are cached per (name, size, data
folder), so building many families over one dataset reads its files once.

Sources, behind the one `load_dataset` interface: scikit-learn's bundled `digits` and
`breast_cancer` (no files needed); files in a data folder (`data_dir=` argument, else the
`LOPT_DATA_DIR` environment variable): `mnist/` and `fashion_mnist/` as the original idx
`.gz` files, `cifar10/cifar10_8x8.npz` and `cifar10/cifar10_exact_subset_32x32.npz` (also read as
`cifar10_grey`, one luminance channel, the grey CIFAR-10 of Celo's meta-training tasks); and any
(image, label) TFDS dataset as `tfds:NAME` (e.g. `tfds:mnist`), read with `tfds.data_source`
from prepared ArrayRecord data (see tasks/tfds_source.py; `download=False` unless asked).
Text and price series have their own loaders (tasks/text_data.py, tasks/finance_data.py).
"""

from __future__ import annotations

import functools
import gzip
import os
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from tasks import tfds_source
from tasks.base import SPLITS, TaskError, check_split

Array = jax.Array
NumpySplits = Dict[str, Tuple[np.ndarray, np.ndarray]]

DATA_DIR_ENV = "LOPT_DATA_DIR"
IMAGE_SIZES = {
    "digits": (8,), "mnist": (8, 16, 28), "fashion_mnist": (8, 16, 28), "cifar10": (8, 16, 32),
    "cifar10_grey": (8, 16, 32),
}
DATASETS = ("digits", "breast_cancer", "mnist", "fashion_mnist", "cifar10", "cifar10_grey")
_FILE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar10_grey")
# ITU-R BT.601 luma weights, the usual RGB-to-grey conversion
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_IMAGE_MAGIC, _IDX_LABEL_MAGIC = 2051, 2049
_VALID_FRACTION, _TEST_FRACTION, _SPLIT_SEED = 0.1, 0.2, 0


class ArrayDataset:
    """A classification dataset held as per-split arrays `x[split]`, `y[split]` (a jax pytree).

    The arrays are the pytree leaves; `name`, `num_classes` and the standardisation statistics
    (`feature_mean`, `feature_std`, per channel or per feature) are static metadata.
    """

    def __init__(
        self,
        x: Mapping[str, Array],
        y: Mapping[str, Array],
        *,
        name: str,
        num_classes: int,
        feature_mean: Tuple[float, ...],
        feature_std: Tuple[float, ...],
    ):
        if set(x) != set(SPLITS) or set(y) != set(SPLITS):
            raise TaskError(f"dataset {name!r} needs splits {SPLITS}, got x={sorted(x)} y={sorted(y)}")
        for split in SPLITS:
            chex.assert_equal_shape_prefix((x[split], y[split]), 1)
            chex.assert_rank(y[split], 1)
        self.x = dict(x)
        self.y = dict(y)
        self.name = name
        self.num_classes = int(num_classes)
        self.feature_mean = tuple(float(v) for v in feature_mean)
        self.feature_std = tuple(float(v) for v in feature_std)

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """The shape of one example, e.g. (8, 8, 1) for digits or (30,) for breast_cancer."""
        return tuple(self.x["train"].shape[1:])

    @property
    def num_train(self) -> int:
        """Number of examples in the train split."""
        return self.num_examples("train")

    @property
    def num_valid(self) -> int:
        """Number of examples in the valid split."""
        return self.num_examples("valid")

    @property
    def num_test(self) -> int:
        """Number of examples in the test split."""
        return self.num_examples("test")

    def num_examples(self, split: str) -> int:
        """Number of examples in `split`."""
        return int(self.x[check_split(split)].shape[0])

    def standardize(self, raw_x: Array) -> Array:
        """Converts stored examples (uint8 or float) to standardised float32 features."""
        mean = jnp.asarray(self.feature_mean, jnp.float32)
        std = jnp.asarray(self.feature_std, jnp.float32)
        return (jnp.asarray(raw_x).astype(jnp.float32) - mean) / std

    def sample(self, key: Array, split: str, batch_size: int) -> Tuple[Array, Array]:
        """Draws `batch_size` examples uniformly with replacement (in-jit): float32 x, int32 y."""
        check_split(split)
        indices = jax.random.randint(key, (batch_size,), 0, self.num_examples(split))
        return self.standardize(self.x[split][indices]), self.y[split][indices].astype(jnp.int32)

    def full_split(self, split: str) -> Tuple[Array, Array]:
        """Returns the whole of `split` as standardised float32 x and int32 y."""
        check_split(split)
        return self.standardize(self.x[split]), self.y[split].astype(jnp.int32)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={self.num_examples(s)}" for s in SPLITS)
        return f"ArrayDataset({self.name!r}, input_shape={self.input_shape}, classes={self.num_classes}, {sizes})"

    def _flatten_with_keys(self):
        children = [(jax.tree_util.GetAttrKey("x"), self.x), (jax.tree_util.GetAttrKey("y"), self.y)]
        return children, (self.name, self.num_classes, self.feature_mean, self.feature_std)

    def _flatten(self):
        return [self.x, self.y], (self.name, self.num_classes, self.feature_mean, self.feature_std)

    @classmethod
    def _unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.x, obj.y = children
        obj.name, obj.num_classes, obj.feature_mean, obj.feature_std = aux
        return obj


jax.tree_util.register_pytree_with_keys(
    ArrayDataset, ArrayDataset._flatten_with_keys, ArrayDataset._unflatten, ArrayDataset._flatten
)


def is_image_dataset(name: str) -> bool:
    """Returns whether `name` is a built-in image dataset or a TFDS one (`tfds:NAME`)."""
    return name in IMAGE_SIZES or tfds_source.is_tfds_name(name)


def load_dataset(
    name: str,
    image_size: Optional[int] = None,
    data_dir: Optional[str] = None,
    max_examples: Optional[int] = None,
    *,
    tfds_data_dir: Optional[str] = None,
    download: bool = False,
) -> ArrayDataset:
    """Loads dataset `name` onto the device as an ArrayDataset (images resized to `image_size`).

    `tfds:NAME` reads an (image, label) TFDS dataset from `tfds_data_dir`; it downloads only
    when `download=True`.
    """
    if tfds_source.is_tfds_name(name):
        return _load_tfds_images(name, image_size, max_examples, tfds_data_dir, download)
    if name not in DATASETS:
        raise TaskError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)} or tfds:NAME")
    if name in IMAGE_SIZES:
        sizes = IMAGE_SIZES[name]
        image_size = sizes[0] if image_size is None else image_size
        if image_size not in sizes:
            raise TaskError(f"dataset {name!r} has no image_size={image_size}; expected one of {sizes}")
    elif image_size is not None:
        raise TaskError(f"dataset {name!r} is not an image dataset; leave image_size unset")
    if max_examples is not None and max_examples < 1:
        raise TaskError(f"max_examples must be a positive integer, got {max_examples}")
    folder = str(resolve_data_dir(data_dir, name)) if name in _FILE_DATASETS else None
    splits, num_classes, mean, std = _load_numpy(name, image_size, folder)
    splits = {s: _subsample(x, y, max_examples) for s, (x, y) in splits.items()}
    return ArrayDataset(
        {s: jnp.asarray(x) for s, (x, _) in splits.items()},
        {s: jnp.asarray(y, jnp.int32) for s, (_, y) in splits.items()},
        name=name,
        num_classes=num_classes,
        feature_mean=mean,
        feature_std=std,
    )


def _load_tfds_images(
    name: str, image_size: Optional[int], max_examples: Optional[int], tfds_data_dir: Optional[str], download: bool
) -> ArrayDataset:
    if max_examples is not None and max_examples < 1:
        raise TaskError(f"max_examples must be a positive integer, got {max_examples}")
    splits, num_classes = tfds_source.read_image_classification(
        tfds_source.strip_prefix(name), tfds_data_dir, download, max_examples
    )
    if image_size is not None:
        if image_size < 1 or image_size > min(splits["train"][0].shape[1:3]):
            native = splits["train"][0].shape[1:3]
            raise TaskError(f"dataset {name!r} has {native} images; image_size={image_size} is impossible")
        splits = {s: (resize_images(x, image_size), y) for s, (x, y) in splits.items()}
    mean, std = _feature_statistics(splits["train"][0])
    return ArrayDataset(
        {s: jnp.asarray(x) for s, (x, _) in splits.items()},
        {s: jnp.asarray(y, jnp.int32) for s, (_, y) in splits.items()},
        name=name, num_classes=num_classes, feature_mean=mean, feature_std=std,
    )


def resolve_data_dir(data_dir: Optional[str], dataset: str) -> Path:
    """Returns the data folder: `data_dir` if given, else $LOPT_DATA_DIR; raises TaskError if unusable."""
    hint = f"pass data_dir=... or set {DATA_DIR_ENV} to a folder that holds {dataset.removesuffix('_grey')}/"
    raw = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if not raw:
        raise TaskError(f"dataset {dataset!r} is read from files but no data folder is set; {hint}")
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        raise TaskError(f"data folder not found: {path}; {hint}")
    return path


def _subsample(x: np.ndarray, y: np.ndarray, max_examples: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    if max_examples is None or len(x) <= max_examples:
        return x, y
    keep = np.sort(np.random.default_rng(_SPLIT_SEED).permutation(len(x))[:max_examples])
    return x[keep], y[keep]


def _feature_statistics(x: np.ndarray, chunk: int = 8192) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    total = np.zeros(x.shape[-1], np.float64)
    total_sq = np.zeros(x.shape[-1], np.float64)
    for start in range(0, len(x), chunk):
        block = x[start: start + chunk].reshape(-1, x.shape[-1]).astype(np.float64)
        total += block.sum(axis=0)
        total_sq += np.square(block).sum(axis=0)
    count = x.size // x.shape[-1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in np.maximum(std, 1e-6))


@functools.lru_cache(maxsize=8)
def _load_source(name: str, source_file: Optional[str], folder: Optional[str]) -> Tuple[NumpySplits, int]:
    if name == "digits":
        return _load_sklearn_digits()
    if name == "breast_cancer":
        return _load_sklearn_breast_cancer()
    if name in ("mnist", "fashion_mnist"):
        return _load_idx_dataset(Path(folder) / name, name)
    splits, num_classes = _load_cifar10(Path(folder) / "cifar10" / source_file)
    if name == "cifar10_grey":
        splits = {split: (to_grey(x), y) for split, (x, y) in splits.items()}
    return splits, num_classes


@functools.lru_cache(maxsize=16)
def _load_numpy(
    name: str, image_size: Optional[int], folder: Optional[str]
) -> Tuple[NumpySplits, int, Tuple[float, ...], Tuple[float, ...]]:
    source_file = None
    if name in ("cifar10", "cifar10_grey"):
        source_file = "cifar10_8x8.npz" if image_size == 8 else "cifar10_exact_subset_32x32.npz"
    splits, num_classes = _load_source(name, source_file, folder)
    if name in IMAGE_SIZES:
        splits = {s: (resize_images(x, image_size), y) for s, (x, y) in splits.items()}
    for x, y in splits.values():
        x.setflags(write=False)
        y.setflags(write=False)
    return (splits, num_classes, *_feature_statistics(splits["train"][0]))


def _load_sklearn_digits() -> Tuple[NumpySplits, int]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[..., None]
    return _three_way_split(images, bunch.target.astype(np.int32)), 10


def _load_sklearn_breast_cancer() -> Tuple[NumpySplits, int]:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return _three_way_split(bunch.data.astype(np.float32), bunch.target.astype(np.int32)), 2


def _three_way_split(x: np.ndarray, y: np.ndarray) -> NumpySplits:
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(x))
    num_test, num_valid = int(len(x) * _TEST_FRACTION), int(len(x) * _VALID_FRACTION)
    test, valid, train = np.split(order, [num_test, num_test + num_valid])
    return {s: (x[np.sort(i)], y[np.sort(i)]) for s, i in (("train", train), ("valid", valid), ("test", test))}


def _carve_valid(x: np.ndarray, y: np.ndarray) -> Tuple[Tuple[np.ndarray, np.ndarray], ...]:
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(x))
    num_valid = int(len(x) * _VALID_FRACTION)
    valid, train = np.sort(order[:num_valid]), np.sort(order[num_valid:])
    return (x[train], y[train]), (x[valid], y[valid])


def _require_file(path: Path, dataset: str) -> Path:
    if not path.is_file():
        raise TaskError(
            f"dataset {dataset!r}: missing file {path}; pass data_dir=... or set {DATA_DIR_ENV} "
            f"to a folder that holds {dataset}/"
        )
    return path


def _read_idx(path: Path, magic: int, dataset: str) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise TaskError(f"dataset {dataset!r}: cannot read {path} as gzip ({error})") from None
    rank = magic - 2048
    header_bytes = 4 + 4 * rank
    if len(raw) < header_bytes:
        raise TaskError(f"dataset {dataset!r}: {path} is too short for an idx header")
    found_magic = int.from_bytes(raw[:4], "big")
    if found_magic != magic:
        raise TaskError(f"dataset {dataset!r}: {path} has idx magic number {found_magic}, expected {magic}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    if len(raw) - header_bytes != int(np.prod(dims)):
        raise TaskError(
            f"dataset {dataset!r}: {path} holds {len(raw) - header_bytes} data bytes, its header says {dims}"
        )
    return np.frombuffer(raw, np.uint8, offset=header_bytes).reshape(dims)


def _load_idx_dataset(folder: Path, dataset: str) -> Tuple[NumpySplits, int]:
    loaded = {}
    for split, (image_file, label_file) in _IDX_FILES.items():
        images = _read_idx(_require_file(folder / image_file, dataset), _IDX_IMAGE_MAGIC, dataset)
        labels = _read_idx(_require_file(folder / label_file, dataset), _IDX_LABEL_MAGIC, dataset)
        if len(images) != len(labels) or labels.max(initial=0) > 9:
            raise TaskError(f"dataset {dataset!r}: {folder} has mismatched images/labels for split {split!r}")
        loaded[split] = (images[..., None], labels.astype(np.int32))
    train, valid = _carve_valid(*loaded["train"])
    return {"train": train, "valid": valid, "test": loaded["test"]}, 10


def _load_cifar10(path: Path) -> Tuple[NumpySplits, int]:
    _require_file(path, "cifar10")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TaskError(f"dataset 'cifar10': cannot read {path} ({message})") from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8 or len(x) != len(y):
            raise TaskError(f"dataset 'cifar10': {path} has unexpected arrays for split {split!r}")
    train, valid = _carve_valid(arrays["x_train"], arrays["y_train"].astype(np.int32).reshape(-1))
    test = (arrays["x_test"], arrays["y_test"].astype(np.int32).reshape(-1))
    return {"train": train, "valid": valid, "test": test}, 10


def to_grey(images: np.ndarray) -> np.ndarray:
    """Returns uint8 RGB images (N, H, W, 3) as one-channel luminance images (N, H, W, 1)."""
    grey = images.astype(np.float32) @ _LUMA_WEIGHTS
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None]


def _area_weights(size_in: int, size_out: int) -> np.ndarray:
    edges = np.arange(size_out + 1) * (size_in / size_out)
    pixels = np.arange(size_in)
    overlap = np.clip(
        np.minimum(edges[1:, None], pixels[None, :] + 1) - np.maximum(edges[:-1, None], pixels[None, :]), 0, None
    )
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def resize_images(images: np.ndarray, size: int, chunk: int = 8192) -> np.ndarray:
    """Resizes uint8 images (N, H, W, C) to (N, size, size, C) by area averaging (box pooling)."""
    if images.ndim != 4:
        raise TaskError(f"resize_images expects (N, H, W, C) images, got shape {images.shape}")
    height, width = images.shape[1:3]
    if (height, width) == (size, size):
        return images
    rows, cols = _area_weights(height, size), _area_weights(width, size)
    out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
    for start in range(0, len(images), chunk):
        block = images[start: start + chunk].astype(np.float32).transpose(0, 3, 1, 2)
        resized = rows @ block @ cols.T
        out[start: start + chunk] = np.clip(np.rint(resized), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return out
