"""Pretrained optimizers shipped in the package: listing, loading, provenance, training, and loading from an install."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import lopt
import lopt.pretrained
import tasks

REPO_ROOT = Path(__file__).resolve().parents[1]
NAME = "small_fc_lopt_digits8"


def test_list_and_unknown_name():
    assert NAME in lopt.pretrained.available()
    assert lopt.pretrained.list() == lopt.pretrained.available()
    with pytest.raises(lopt.ExportError) as info:
        lopt.pretrained.load("no_such_optimizer")
    message = str(info.value)
    assert "\n" not in message and "no pretrained optimizer 'no_such_optimizer'" in message and NAME in message


def test_load_has_provenance_and_trains_a_small_mlp():
    loaded = lopt.pretrained.load(NAME)
    provenance = loaded.provenance
    assert provenance["config"]["task"]["family"] == "mlp_image"
    assert provenance["meta_steps"] > 0 and "date" in provenance and "versions" in provenance
    assert provenance["pretrained"]["name"] == NAME
    assert "digits_mlp" in provenance["benchmark"]["settings"]
    assert lopt.pretrained.info(NAME)["provenance"] == provenance

    task = tasks.get("mlp_image", dataset="digits", hidden=(16,)).task(
        {"activation": np.int32(0), "init_scale": np.float32(1.0)})
    tx = loaded.transformation(num_steps=150)
    params = task.init(jax.random.key(0))

    @jax.jit
    def train(params):
        def step(carry, key):
            params, state = carry
            loss, grads = jax.value_and_grad(task.loss)(params, key, task.sample_batch(key, "train"))
            updates, state = tx.update(grads, state, params, loss=loss)
            return (optax.apply_updates(params, updates), state), loss

        return jax.lax.scan(step, (params, tx.init(params)), jax.random.split(jax.random.key(1), 150))[1]

    losses = np.asarray(train(params))
    assert np.all(np.isfinite(losses))
    assert losses[-10:].mean() < 0.25 * losses[:5].mean()


def test_load_overrides_execution_arguments_without_changing_the_update():
    plain, chunked = lopt.pretrained.load(NAME), lopt.pretrained.load(NAME, concurrent_chunks=2)
    assert chunked.optimizer.concurrent_chunks == 2 and plain.optimizer.concurrent_chunks == 1
    params = {"w": jax.random.normal(jax.random.key(0), (40, 30))}
    grads = jax.tree.map(lambda p: 0.2 * p, params)
    plain_tx, chunked_tx = plain.transformation(num_steps=100), chunked.transformation(num_steps=100)
    np.testing.assert_allclose(plain_tx.update(grads, plain_tx.init(params), params)[0]["w"],
                               chunked_tx.update(grads, chunked_tx.init(params), params)[0]["w"], rtol=1e-5, atol=1e-9)
    with pytest.raises(lopt.ExportError) as info:
        lopt.pretrained.load(NAME, concurrent_chunks=0)
    assert "overrides {'concurrent_chunks': 0}" in str(info.value) and "concurrent_chunks >= 1" in str(info.value)


def test_loads_from_an_installed_package(tmp_path):
    source, target = tmp_path / "source", tmp_path / "site"
    for package in ("lopt", "tasks", "meta_train"):
        shutil.copytree(REPO_ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "setup.py", source / "setup.py")
    isolation = [] if importlib.util.find_spec("wheel") is None else ["--no-build-isolation"]
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", *isolation,
         "--target", str(target), str(source)],
        capture_output=True, text=True, cwd=tmp_path, timeout=180,
    )
    if installed.returncode != 0 and "No matching distribution" in installed.stderr:
        pytest.skip(f"cannot build a wheel here (no build backend reachable): {installed.stderr.strip()[-200:]}")
    assert installed.returncode == 0, installed.stderr
    assert (target / "lopt" / "pretrained" / f"{NAME}.lopt").is_file()
    script = textwrap.dedent(f"""
        import lopt, lopt.pretrained
        assert lopt.__file__.startswith({str(target)!r}), lopt.__file__
        loaded = lopt.pretrained.load({NAME!r})
        print(loaded.name, loaded.provenance["meta_steps"])
    """)
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("small_fc_lopt ")


def test_readme_pretrained_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), flags=re.S)
    block = next(b for b in blocks if "lopt.pretrained.load" in b)
    namespace = {}
    exec(compile(block, "README-pretrained", "exec"), namespace)
    assert namespace["loaded"].provenance["meta_steps"] > 0
