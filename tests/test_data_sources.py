"""The data layer: TFDS (mocked and a real ArrayRecord dataset built in a temp folder), local files, sklearn."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tasks
from tasks.text_data import load_text, tokenize

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_TEXT = [f"line {i}: to be, or not to be, that is the question." for i in range(40)]


class LoptTinyImages(tfds.core.GeneratorBasedBuilder):
    """A 3-class dataset of 8x8 uint8 images whose pixels all equal their index (train and test only)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = {"image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=3)}
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 60), "test": self._generate_examples(100, 12)}

    def _generate_examples(self, start: int, count: int):
        for i in range(start, start + count):
            yield i, {"image": np.full((8, 8, 1), i % 256, np.uint8), "label": i % 3}


class LoptTinyText(tfds.core.GeneratorBasedBuilder):
    """Lines of text in train, validation and test splits (TFDS shuffles their order when writing)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 30), "validation": self._generate_examples(30, 5),
                "test": self._generate_examples(35, 5)}

    def _generate_examples(self, start: int, count: int):
        for i in range(start, start + count):
            yield i, {"text": TINY_TEXT[i]}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tfds")
    for builder in (LoptTinyImages, LoptTinyText):
        builder(data_dir=str(folder), file_format="array_record").download_and_prepare()
    return str(folder)


def assert_one_line(error: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message


def test_tfds_builder_images_load_through_load_dataset(tfds_dir):
    data = tasks.load_dataset("tfds:lopt_tiny_images", tfds_data_dir=tfds_dir)
    assert data.num_classes == 3 and data.input_shape == (8, 8, 1)
    assert data.num_train + data.num_valid == 60 and data.num_test == 12
    for split in tasks.SPLITS:
        pixels = np.asarray(data.x[split])[:, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(np.asarray(data.y[split]), pixels % 3)
    assert set(np.asarray(data.x["valid"])[:, 0, 0, 0]).isdisjoint(np.asarray(data.x["train"])[:, 0, 0, 0])
    family = tasks.get("cnn_image", dataset="tfds:lopt_tiny_images", tfds_data_dir=tfds_dir, channels=(4,),
                       activations=("relu",), batch_size=8)
    x, y = jax.jit(lambda f, k: f.task(f.sample(k)).sample_batch(k, "train"))(family, jax.random.key(0))
    assert x.shape == (8, 8, 8, 1) and y.dtype == jnp.int32


def test_tfds_builder_text_keeps_its_splits(tfds_dir):
    data = load_text("tfds:lopt_tiny_text", tfds_data_dir=tfds_dir, tokenizer="char")
    assert sorted(data.decode(np.asarray(data.tokens["valid"])).split("\n")) == sorted(TINY_TEXT[30:35])
    assert sorted(data.decode(np.asarray(data.tokens["train"])).split("\n")) == sorted(TINY_TEXT[:30])
    assert data.tokens["train"].dtype == jnp.uint8 and data.vocab_size == len(set("".join(TINY_TEXT + ["\n"])))
    capped = load_text("tfds:lopt_tiny_text", tfds_data_dir=tfds_dir, max_chars=100)
    assert capped.num_tokens("train") == 100 and capped.num_tokens("valid") == 10


def test_tfds_mock_data_feeds_image_and_text_families():
    with tfds.testing.mock_data(num_examples=40):
        family = tasks.get("mlp_image", dataset="tfds:mnist", image_size=8, hidden=(8,), activations=("relu",))
        lm = tasks.get("transformer_lm", dataset="tfds:tiny_shakespeare", width=8, depth=1, heads=1, seq_len=4,
                       batch_size=2)
    assert family.data.num_classes == 10 and family.data.input_shape == (8, 8, 1)
    assert all(family.data.num_examples(s) > 0 for s in tasks.SPLITS)
    assert lm.data.num_tokens("train") > 5 and lm.data.vocab_size <= 256
    windows = lm.data.sample(jax.random.key(1), "valid", 2, 5)
    assert windows.shape == (2, 5) and int(windows.max()) < lm.data.vocab_size


@pytest.mark.parametrize("name", ["tfds:mnist", "tfds:lm1b", "tfds:no_such_dataset_xyz"])
def test_missing_tfds_data_is_a_fast_one_line_error(tmp_path, name):
    loader = load_text if name == "tfds:lm1b" else tasks.load_dataset
    began = time.perf_counter()
    with pytest.raises(tasks.TaskError) as error:
        loader(name, tfds_data_dir=str(tmp_path))
    assert time.perf_counter() - began < 2.0
    assert_one_line(error, name.split(":")[1], "download=False")


def test_local_text_file_relative_to_data_dir_and_tokenizers(tmp_path, monkeypatch):
    (tmp_path / "corpus.txt").write_text("héllo wörld\n" * 200, encoding="utf-8")
    monkeypatch.setenv("LOPT_DATA_DIR", str(tmp_path))
    chars = load_text("file:corpus.txt")
    assert chars.vocab == "".join(sorted(set("héllo wörld\n"))) and chars.num_tokens("train") == 2160
    assert chars.decode(np.asarray(chars.tokens["train"][:12])) == "héllo wörld\n"
    raw = load_text("file:corpus.txt", tokenizer="byte")
    assert raw.vocab is None and raw.vocab_size == 256
    assert raw.decode(np.asarray(raw.tokens["train"][:14])) == "héllo wörld\n"
    ids, vocab = tokenize({"train": "".join(map(chr, range(300))), "valid": "", "test": ""}, "auto")
    assert vocab is None and ids["train"].dtype == np.uint8
    with pytest.raises(tasks.TaskError) as error:
        tokenize({"train": "".join(map(chr, range(300)))}, "char")
    assert_one_line(error, "byte")


def test_missing_local_text_names_the_path(tmp_path, monkeypatch):
    monkeypatch.delenv("LOPT_DATA_DIR", raising=False)
    with pytest.raises(tasks.TaskError) as error:
        load_text("tiny_shakespeare")
    assert_one_line(error, "LOPT_DATA_DIR")
    with pytest.raises(tasks.TaskError) as error:
        load_text("tiny_shakespeare", str(tmp_path))
    assert_one_line(error, str(tmp_path / "tinyshakespeare" / "input.txt"))
    with pytest.raises(tasks.TaskError) as error:
        load_text("shakespeare_typo")
    assert_one_line(error, "tiny_shakespeare", "tfds:NAME")


def test_bundled_sklearn_text_needs_no_files(monkeypatch):
    monkeypatch.delenv("LOPT_DATA_DIR", raising=False)
    data = load_text("sklearn_docs")
    assert data.num_tokens("train") > 30_000 and 0 < data.num_tokens("test") < data.num_tokens("train")
    windows = jax.jit(lambda d, k: d.sample(k, "train", 4, 9))(data, jax.random.key(0))
    assert windows.shape == (4, 9) and windows.dtype == jnp.int32 and int(windows.max()) < data.vocab_size


def test_tiny_shakespeare_from_the_data_folder():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"no shared data folder at {SHARED_DATA}")
    data = load_text("tiny_shakespeare", str(SHARED_DATA))
    assert data.vocab_size == 65 and sum(data.num_tokens(s) for s in tasks.SPLITS) == 1_115_394
    assert data.decode(np.asarray(data.tokens["train"][:14])) == "First Citizen:"
