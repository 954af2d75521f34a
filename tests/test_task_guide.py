"""docs/adding_a_task_family.md: its flax adapter snippets run, its hand-written family is
tasks/examples/diabetes_mlp.py verbatim, and its snippets run."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
import pytest

import lopt
import tasks
from meta_train import build as build_lib
from meta_train import config as config_lib
from tasks.examples import diabetes_mlp

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "adding_a_task_family.md"
EXAMPLE = REPO / "tasks" / "examples" / "diabetes_mlp.py"


def code_blocks(language: str = "python"):
    fenced = re.findall(r"^```(\w*)\n(.*?)^```$", GUIDE.read_text(), flags=re.S | re.M)
    return [body for fence_language, body in fenced if fence_language == language]


def code_block(containing: str, language: str = "python") -> str:
    return next(block for block in code_blocks(language) if containing in block)


def test_guide_starts_with_the_flax_adapter_and_keeps_the_hand_written_route_as_advanced():
    text = GUIDE.read_text()
    assert text.index("tasks.from_flax") < text.index("## Advanced: writing a family by hand")
    assert code_blocks()[0] == code_block("tasks.from_flax(")


@pytest.fixture(scope="module")
def adapter_snippet():
    namespace = {}
    exec(compile(code_block("tasks.from_flax("), "guide-flax-snippet", "exec"), namespace)
    return namespace


def test_guide_flax_snippet_builds_a_family_that_validates(adapter_snippet):
    family, report = adapter_snippet["family"], adapter_snippet["report"]
    assert isinstance(family, tasks.FlaxFamily) and family.name == "digits_flax"
    assert np.all(report.final_loss < report.initial_loss)


def test_guide_train_state_snippet_trains_the_model_with_an_exported_optimizer(adapter_snippet, tmp_path, monkeypatch):
    optimizer = lopt.get("small_fc_lopt", hidden_sizes=(8,))
    lopt.save(tmp_path / "optimizer.lopt", optimizer, optimizer.init(jax.random.key(0)), {})
    monkeypatch.chdir(tmp_path)
    namespace = dict(adapter_snippet)
    exec(compile(code_block("train_state.TrainState.create("), "guide-train-state-snippet", "exec"), namespace)
    assert int(namespace["state"].step) == 100 and np.isfinite(float(namespace["loss"]))


def test_guide_flax_config_snippet_registers_a_factory_and_builds(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks.registry, "_FAMILIES", dict(tasks.registry._FAMILIES))
    path = tmp_path / "digits_flax.py"
    path.write_text(code_block("@tasks.register(", language=""))
    run = build_lib.build(config_lib.load_config(path))
    assert isinstance(run.family, tasks.FlaxFamily) and run.family.name == "digits_flax"
    assert run.family.subset_size == round(0.5 * run.family.x["train"].shape[0])


def test_guide_shows_the_example_file_verbatim_in_under_60_lines():
    source = EXAMPLE.read_text()
    assert source in code_blocks()
    assert len(source.splitlines()) < 60


def test_example_family_is_registered_and_named():
    family = tasks.get("diabetes_mlp", hidden=8)
    assert isinstance(family, diabetes_mlp.DiabetesMLPFamily) and family.name == "diabetes_mlp"
    assert family.x["train"].shape == (310, 10) and family.y["test"].shape == (66,)
    np.testing.assert_allclose(np.asarray(family.y["train"]).std(), 1.0, rtol=1e-5)


def test_example_family_declares_its_data_fields_as_the_pytree_leaves():
    family = tasks.get("diabetes_mlp", hidden=8)
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(family)[0]]
    assert paths == [f".{field}['{split}']" for field in ("x", "y") for split in sorted(tasks.SPLITS)]
    assert jax.tree.structure(family) == jax.tree.structure(tasks.get("diabetes_mlp", hidden=8))


def test_guide_snippet_validates_and_meta_trains_two_pes_steps():
    namespace = {}
    exec(compile(code_block("trainer = meta_train.Trainer("), "guide-snippet", "exec"), namespace)
    assert int(namespace["state"].step) == 2
    assert np.isfinite(float(namespace["metrics"]["meta_loss"]))
    assert np.all(namespace["report"].final_loss < namespace["report"].initial_loss)


def test_guide_config_snippet_builds(tmp_path):
    snippet = code_block("import tasks.examples.diabetes_mlp", language="")
    path = tmp_path / "diabetes.py"
    path.write_text(snippet)
    config = config_lib.load_config(path)
    run = build_lib.build(config)
    assert run.family.name == "diabetes_mlp" and run.family.hidden == 16
