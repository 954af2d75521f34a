"""docs/adding_a_task_family.md: its code is tasks/examples/diabetes_mlp.py verbatim, and its snippets run."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np

import tasks
from meta_train import config as config_lib
from tasks.examples import diabetes_mlp

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "adding_a_task_family.md"
EXAMPLE = REPO / "tasks" / "examples" / "diabetes_mlp.py"


def code_blocks(language: str = "python"):
    return re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.S)


def test_guide_shows_the_example_file_verbatim_in_under_60_lines():
    source = EXAMPLE.read_text()
    assert code_blocks()[0] == source
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
    exec(compile(code_blocks()[1], "guide-snippet", "exec"), namespace)
    assert int(namespace["state"].step) == 2
    assert np.isfinite(float(namespace["metrics"]["meta_loss"]))
    assert np.all(namespace["report"].final_loss < namespace["report"].initial_loss)


def test_guide_config_snippet_builds(tmp_path):
    snippet = re.findall(r"```\n(import tasks\.examples.*?)```", GUIDE.read_text(), flags=re.S)[0]
    path = tmp_path / "diabetes.py"
    path.write_text(snippet)
    config = config_lib.load_config(path)
    run = config_lib.build(config)
    assert run.family.name == "diabetes_mlp" and run.family.hidden == 16
