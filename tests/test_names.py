"""One name per concept: small_fc_lopt's one name, `transformation`, and the deprecated names that still work."""

import importlib
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lopt
from lopt import export_format, features, normalization

LEGACY_FILE = Path(__file__).resolve().parent / "fixtures" / "legacy_small_fc_lopt.lopt"


def test_legacy_registry_name_warns_and_builds_small_fc_lopt():
    with pytest.warns(DeprecationWarning, match="small_fc_lopt"):
        optimizer = lopt.get("mlp", hidden_sizes=(4,))
    assert isinstance(optimizer, lopt.SmallFcLOpt) and optimizer.name == "small_fc_lopt"
    assert optimizer == lopt.get("small_fc_lopt", hidden_sizes=(4,))
    assert "mlp" not in lopt.registered_names()


def test_legacy_class_and_module_names_warn():
    with pytest.warns(DeprecationWarning, match="SmallFcLOpt"):
        assert lopt.MLPLOpt is lopt.SmallFcLOpt
    with pytest.warns(DeprecationWarning, match="SmallFcLOptState"):
        assert lopt.MLPLOptState is lopt.SmallFcLOptState
    sys.modules.pop("lopt.mlp_lopt", None)
    with pytest.warns(DeprecationWarning, match="lopt.small_fc_lopt"):
        legacy_module = importlib.import_module("lopt.mlp_lopt")
    assert legacy_module.MLPLOpt is lopt.SmallFcLOpt


def test_export_file_with_legacy_name_loads_silently_and_computes_what_it_did():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = lopt.load(LEGACY_FILE)
        check = loaded.provenance["check"]
        params, grads = {"w": jnp.asarray(check["params"])}, {"w": jnp.asarray(check["grads"])}
        transformation = loaded.transformation()
        updates, _ = transformation.update(grads, transformation.init(params), params)
    assert loaded.name == "small_fc_lopt" and isinstance(loaded.optimizer, lopt.SmallFcLOpt)
    assert loaded.optimizer.hidden_sizes == (8,) and loaded.provenance["note"] == "written before the rename"
    np.testing.assert_allclose(updates["w"], check["first_update"], rtol=1e-6)


def test_new_export_files_store_the_current_name(tmp_path):
    optimizer = lopt.SmallFcLOpt(hidden_sizes=(4,))
    path = lopt.save(tmp_path / "new.lopt", optimizer, optimizer.init(jax.random.key(0)))
    assert b'"name":"small_fc_lopt"' in path.read_bytes() and b'"name":"mlp"' not in path.read_bytes()
    assert export_format.read(path).name == export_format.read(LEGACY_FILE).name == "small_fc_lopt"


def test_torch_reads_the_legacy_and_the_current_name(tmp_path):
    torch = pytest.importorskip("torch")
    import lopt.torch

    optimizer = lopt.SmallFcLOpt(hidden_sizes=(8,), step_mult=1e-2)
    current = lopt.save(tmp_path / "new.lopt", optimizer, optimizer.init(jax.random.key(0)))
    for path in (LEGACY_FILE, current):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            torch_optimizer = lopt.torch.load(path, [torch.nn.Parameter(torch.ones(3))])
        assert isinstance(torch_optimizer, lopt.torch.SmallFCLOpt)


def test_optimizer_method_is_a_deprecated_name_of_transformation():
    optimizer = lopt.SmallFcLOpt(hidden_sizes=(4,))
    theta = optimizer.init(jax.random.key(0))
    params = {"w": jnp.arange(3.0)}
    grads = {"w": jnp.ones(3)}
    with pytest.warns(DeprecationWarning, match="transformation"):
        old = optimizer.optimizer(theta)
    new = optimizer.transformation(theta)
    old_updates, _ = old.update(grads, old.init(params), params)
    new_updates, _ = new.update(grads, new.init(params), params)
    np.testing.assert_array_equal(old_updates["w"], new_updates["w"])


def test_normalisers_live_in_lopt_normalization():
    x = jnp.asarray([[1.0, -2.0], [3.0, 0.5], [0.0, 4.0]])
    with pytest.warns(DeprecationWarning, match="second_moment_normalize_factors"):
        factors = features.second_moment_factors
    assert factors is normalization.second_moment_normalize_factors
    with pytest.warns(DeprecationWarning, match="lopt.normalization.second_moment_normalize"):
        assert features.second_moment_normalize is normalization.second_moment_normalize
    np.testing.assert_allclose(normalization.second_moment_normalize(x),
                               x * normalization.second_moment_normalize_factors(x), rtol=1e-6)
