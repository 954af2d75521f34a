"""configs/generalist.py: its task distribution is what it says, and a stopped run resumes bit for bit (data folder needed)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

import lopt
import tasks
from meta_train import build as build_lib
from meta_train import config as config_lib
from meta_train.cli import meta_train_main

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SMALL = ["--config.meta_train.estimator.kwargs.trunc_length=5", "--config.meta_train.horizon.kwargs.low=10",
         "--config.meta_train.horizon.kwargs.high=30", "--config.checkpoint.every=2", "--config.log_every=1",
         "--config.meta_train.host_devices=0", "--config.meta_train.parallel=none", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir() -> str:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"configs/generalist.py reads the data folder; none at {SHARED_DATA}")
    return str(SHARED_DATA)


def test_generalist_trains_celo2_on_four_reparameterised_8x8_mlp_families(data_dir):
    config = config_lib.load_config(REPO / "configs" / "generalist.py")
    config.data_dir = data_dir
    config.meta_train.host_devices = 0
    config.meta_train.parallel = "none"
    run = build_lib.build(config)
    assert isinstance(run.learned_optimizer, lopt.get("celo2").__class__)
    families = run.family
    assert len(families) == 4
    names = set()
    for family in families:
        assert isinstance(family, tasks.ReparameterizedFamily)
        assert family.base.layer_sizes[1:] == (32, 10) and family.base.batch_size == 64
        names.add(family.base.dataset_name)
    assert names == {"mnist", "fashion_mnist", "cifar10_grey", "digits"}
    assert run.trainer.estimator.trunc_length == 50 and run.trainer.horizon.max_length == 2000


def test_generalist_run_resumes_bit_for_bit(tmp_path, data_dir, capsys, monkeypatch):
    monkeypatch.setenv("LOPT_DATA_DIR", data_dir)
    config = str(REPO / "configs" / "generalist.py")
    full, parted = tmp_path / "full", tmp_path / "parted"
    assert meta_train_main(["--config", config, "--workdir", str(full), "--config.meta_train.num_steps=4"] + SMALL) == 0
    assert meta_train_main(["--config", config, "--workdir", str(parted), "--config.meta_train.num_steps=2"] + SMALL) == 0
    assert meta_train_main(["--config", config, "--workdir", str(parted), "--config.meta_train.num_steps=4"] + SMALL) == 0
    assert "resumed from checkpoint at meta-step 2" in capsys.readouterr().err
    a, b = lopt.export.read(full / "optimizer.lopt"), lopt.export.read(parted / "optimizer.lopt")
    for x, y in zip(jax.tree.leaves(a.meta_params), jax.tree.leaves(b.meta_params)):
        np.testing.assert_array_equal(x, y)
    assert (parted / "meta_loss.png").exists()


def test_every_ablation_row_is_a_valid_config_that_changes_one_lever(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ablation", REPO / "scripts" / "bench_ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    recipe = config_lib.load_config(REPO / "configs" / "generalist.py")
    for row in ablation.ROWS:
        path = tmp_path / f"{row}.py"
        path.write_text(ablation.row_config_source(ablation.ROWS[row]))
        config = config_lib.load_config(path)
        config_lib.validate(config)
        changed = {key for key in ("task", "optimizer", "meta_train") if config[key].to_dict() != recipe[key].to_dict()}
        assert changed == ({"task"} if row == "no_augmentation" else set() if row == "recipe" else {"optimizer"}), row
    budgeted = tmp_path / "budgeted.py"
    budgeted.write_text(ablation.row_config_source(ablation.ROWS["no_augmentation"], meta_steps=123))
    config = config_lib.load_config(budgeted)
    assert (config.meta_train.num_steps, config.meta_train.meta_lr_schedule.kwargs.decay_steps) == (123, 123)
    assert tuple(config.task.reparameterize.levels) == ()
