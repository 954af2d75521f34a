"""The README's Python examples run as written (with the export path pointed at a fresh file)."""

from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np

import lopt

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_commands_come_first():
    lines = README.read_text().splitlines()
    commands = lines[lines.index("```bash") + 1: lines.index("```bash") + 3]
    assert commands[0].startswith("pip install -e . && lopt-meta-train --config configs/quickstart.py")
    assert commands[1] == 'pip install -e ".[test]" && python -m pytest -q -n 2 --dist loadfile tests'
    assert commands[1].split("&& ")[1].replace("python", "python3") in (README.parent / ".ci" / "run").read_text()


def test_readme_api_example_meta_trains():
    block = python_blocks()[0].replace("range(100)", "range(3)")
    namespace = {}
    exec(compile(block, "README-api", "exec"), namespace)
    assert int(namespace["state"].step) == 3
    assert np.isfinite(float(namespace["metrics"]["meta_loss"]))


def test_readme_export_example_trains_with_a_loaded_optimizer(tmp_path):
    optimizer = lopt.SmallFcLOpt(step_mult=1e-2)
    path = tmp_path / "optimizer.lopt"
    lopt.save(path, optimizer, optimizer.init(jax.random.key(0)), {"note": "test"})
    block = python_blocks()[1].replace("runs/quickstart/optimizer.lopt", str(path))
    namespace = {}
    exec(compile(block, "README-export", "exec"), namespace)
    assert np.isfinite(float(namespace["loss"]))
