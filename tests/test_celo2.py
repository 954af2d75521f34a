"""Celo2 reproduces the authors' trajectories and behaves as documented (orthogonalisation, routing, schedule, vmap, export)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt import celo2 as celo2_lib

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "celo2"
REFERENCE_PATHS = {"conv": "['conv']", "dense/b": "['dense']['b']", "dense/w": "['dense']['w']", "scale": "['scale']"}


def reference_tree(data, prefix):
    leaf = lambda name: jnp.asarray(data[prefix + REFERENCE_PATHS[name]])
    return {"conv": leaf("conv"), "dense": {"b": leaf("dense/b"), "w": leaf("dense/w")}, "scale": leaf("scale")}


def load_reference(variant):
    path = REFERENCE_DIR / f"{variant}_reference_trajectory.npz"
    if not path.exists():
        pytest.skip(f"reference data not found at {path}")
    return np.load(path)


@pytest.mark.parametrize("variant, orthogonalize", [("celo2base", False), ("celo2", True)])
def test_reproduces_the_authors_trajectory(variant, orthogonalize):
    """20 steps of the authors' configuration match their parameters at every step (conv, matrix, bias, scalar)."""
    data = load_reference(variant)
    theta = celo2_lib.celo2_meta_params_from_reference({k: data[k] for k in data.files if k.startswith("theta/")})
    # celo2base sends every leaf to the learned rule; celo2 sends dense/b and scale to Adam.
    optimizer = lopt.get("celo2", learning_rate=1e-3, orthogonalize=orthogonalize,
                         adam_regex=celo2_lib.DEFAULT_ADAM_REGEX if orthogonalize else "")
    tx = optimizer.transformation(theta, num_steps=100)
    initial = params = reference_tree(data, "init/")
    state = tx.init(params)
    update = jax.jit(tx.update)
    for t in range(20):
        updates, state = update(reference_tree(data, f"grad/{t}/"), state, params, loss=data["losses"][t])
        params = optax.apply_updates(params, updates)
        expected = reference_tree(data, f"params/{t}/")
        for name, got, want, start in zip(REFERENCE_PATHS, jax.tree.leaves(params), jax.tree.leaves(expected),
                                          jax.tree.leaves(initial)):
            moved, want_moved = np.asarray(got) - np.asarray(start), np.asarray(want) - np.asarray(start)
            scale = np.max(np.abs(want_moved))
            assert scale > 0, (variant, t, name)
            # Relative to how far the parameters moved, plus float32 rounding of the parameters themselves.
            rounding = 4 * np.finfo(np.float32).eps * np.max(np.abs(np.asarray(want)))
            assert np.max(np.abs(moved - want_moved)) <= 1e-5 * scale + rounding, (variant, t, name)
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-7)


def test_reference_mapping_reads_the_authors_nested_tree_and_rejects_other_trees():
    data = load_reference("celo2")
    flat = {k: data[k] for k in data.files if k.startswith("theta/")}
    nested = {"ff_mod_stack": {"~": {k.split("['")[-1].rstrip("']"): v for k, v in flat.items()}}}
    from_flat = celo2_lib.celo2_meta_params_from_reference(flat)
    from_nested = celo2_lib.celo2_meta_params_from_reference(nested)
    assert jax.tree.structure(from_flat) == jax.tree.structure(lopt.get("celo2").init(jax.random.key(0)))
    for a, b in zip(jax.tree.leaves(from_flat), jax.tree.leaves(from_nested)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="not a Celo2 reference theta"):
        celo2_lib.celo2_meta_params_from_reference({"w1": np.zeros((8, 8))})


def test_init_is_truncated_normal_with_fan_in_scale():
    theta = lopt.get("celo2").init(jax.random.key(3))
    assert {k: v.shape for k, v in theta.items()} == {
        "w0": (30, 8), "b0": (8,), "w1": (8, 8), "b1": (8,), "w2": (8, 1), "b2": (1,)}
    for name, fan_in in (("w0", 30), ("w1", 8), ("w2", 8)):
        w = np.asarray(theta[name]) * np.sqrt(fan_in)
        assert np.all(np.abs(w) <= 2.0) and np.std(w) > 0.5, name
    assert all(not np.any(np.asarray(theta[b])) for b in ("b0", "b1", "b2"))


def direct_newton_schulz(x, num_steps=5, coeffs=(3.4445, -4.7750, 2.0315), eps=1e-8):
    """Muon's quintic iteration on a wide matrix, in numpy float64."""
    a, b, c = coeffs
    x = x / (np.linalg.norm(x) + eps)
    for _ in range(num_steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def test_newton_schulz_gives_singular_values_near_one():
    x = jax.random.normal(jax.random.key(0), (3, 24, 40)) * jnp.linspace(0.1, 10.0, 40)
    for matrix in (x, jnp.swapaxes(x, -2, -1)):
        singular = np.linalg.svd(np.asarray(celo2_lib.newton_schulz(matrix)), compute_uv=False)
        assert singular.shape == (3, 24)
        assert np.all(singular > 0.6) and np.all(singular < 1.25), singular
    # Square (direct iteration) and 4:1 (Gram-matrix iteration) shapes agree with a float64 direct iteration.
    for shape in ((16, 16), (12, 48)):
        matrix = jax.random.normal(jax.random.key(2), shape) * jnp.linspace(0.05, 2.0, shape[1])
        expected = direct_newton_schulz(np.asarray(matrix, np.float64))
        np.testing.assert_allclose(np.asarray(celo2_lib.newton_schulz(matrix)), expected, atol=2e-5)
        np.testing.assert_allclose(np.asarray(celo2_lib.newton_schulz(matrix.T)), expected.T, atol=2e-5)
    before = np.linalg.svd(np.asarray(x), compute_uv=False)
    assert np.max(before) / np.min(before) > 5.0
    with pytest.raises(ValueError, match=">= 2 dims"):
        celo2_lib.newton_schulz(jnp.ones((4,)))


def singular_value_spread(matrix):
    singular = np.linalg.svd(np.asarray(matrix), compute_uv=False)
    return singular / np.sqrt(np.mean(singular ** 2))


def test_orthogonalised_step_of_a_random_matrix_is_near_orthogonal():
    optimizer = lopt.get("celo2", orthogonalize=True)
    plain = lopt.get("celo2", orthogonalize=False)
    theta = optimizer.init(jax.random.key(0))
    key_p, key_g = jax.random.split(jax.random.key(1))
    params = {"w": jax.random.normal(key_p, (48, 16))}
    grads = {"w": jax.random.normal(key_g, (48, 16)) * jnp.linspace(0.01, 3.0, 16)}
    steps = {}
    for name, opt in (("orthogonal", optimizer), ("plain", plain)):
        tx = opt.transformation(theta)
        steps[name] = jax.jit(tx.update)(grads, tx.init(params), params)[0]["w"]
    spread = singular_value_spread(steps["orthogonal"])
    # The quintic's fixed point is not 1: five iterations leave singular values in about [0.68, 1.13].
    assert spread.max() / spread.min() < 1.13 / 0.68, spread
    plain_spread = singular_value_spread(steps["plain"])
    assert plain_spread.max() / plain_spread.min() > 3.0
    # Output normalisation: the step's RMS is the learning rate.
    np.testing.assert_allclose(np.sqrt(np.mean(np.square(np.asarray(steps["orthogonal"])))), 1e-3, rtol=1e-4)


def test_regex_routes_exactly_the_matched_leaves_to_adam():
    params = {"dense": {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}, "scale": jnp.asarray(2.0),
              "head": {"bias": jnp.ones((3,)), "w": jnp.ones((3, 2))}}
    labels = celo2_lib.adam_branch_labels(params, r"/b$|^scale$|bias")
    assert labels == {"dense": {"w": "rule", "b": "adam"}, "scale": "adam", "head": {"bias": "adam", "w": "rule"}}
    default = celo2_lib.adam_branch_labels(params, celo2_lib.DEFAULT_ADAM_REGEX)
    assert default["head"]["bias"] == "rule" and default["dense"]["b"] == "adam"
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    optimizer = lopt.get("celo2", adam_regex=r"/b$|^scale$|bias", learning_rate=1e-2)
    tx = optimizer.transformation(optimizer.init(jax.random.key(0)))
    state, update = tx.init(params), jax.jit(tx.update)
    # Adam without bias correction: m = 0.1 g, v = 0.05 g^2, step = lr * mult_1d * m / sqrt(v + eps) twice.
    m, v = 0.0, 0.0
    for _ in range(2):
        updates, state = update(grads, state, params)
        m, v = 0.9 * m + 0.1 * 0.3, 0.95 * v + 0.05 * 0.09
        expected = -1e-2 * 20.0 * m / np.sqrt(v + 1e-8)
        for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
            is_adam = jax.tree_util.keystr(path) in ("['dense']['b']", "['scale']", "['head']['bias']")
            matches = np.allclose(np.asarray(u), expected, rtol=1e-5)
            assert matches == is_adam, (jax.tree_util.keystr(path), np.asarray(u), expected)


def test_weight_decay_adds_lr_times_decay_times_params():
    optimizer_wd = lopt.get("celo2", weight_decay=0.1, learning_rate=1e-2)
    optimizer = lopt.get("celo2", learning_rate=1e-2)
    theta = optimizer.init(jax.random.key(0))
    params = {"layer": {"w": jax.random.normal(jax.random.key(4), (5, 6)), "b": jnp.ones((6,))}}
    grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)
    with_decay = optimizer_wd.transformation(theta)
    without = optimizer.transformation(theta)
    a = jax.jit(with_decay.update)(grads, with_decay.init(params), params)[0]["layer"]
    b = jax.jit(without.update)(grads, without.init(params), params)[0]["layer"]
    w, bias = np.asarray(params["layer"]["w"]), np.asarray(params["layer"]["b"])
    np.testing.assert_allclose(np.asarray(a["w"] - b["w"]), -1e-2 * 0.1 * w, rtol=1e-4, atol=1e-9)
    # The Adam branch's decay is scaled by mult_1d too, as in the authors' code.
    np.testing.assert_allclose(np.asarray(a["b"] - b["b"]), -1e-2 * 20 * 0.1 * bias, rtol=1e-4)


def run_updates(tx, params, grads, num_updates):
    state, out, update = tx.init(params), [], jax.jit(tx.update)
    for _ in range(num_updates):
        updates, state = update(grads, state, params)
        out.append(updates)
    return out


@pytest.mark.parametrize("schedule", ["cosine", "warmup_cosine"])
def test_schedule_scales_every_step_by_its_multiplier(schedule):
    num_steps, final_fraction, warmup_fraction = 8, 0.1, 0.25
    constant = lopt.get("celo2", learning_rate=3e-3)
    scheduled = lopt.get("celo2", learning_rate=3e-3, schedule=schedule, final_fraction=final_fraction,
                         warmup_fraction=warmup_fraction)
    theta = constant.init(jax.random.key(0))
    params = {"w": jax.random.normal(jax.random.key(5), (6, 4)), "b": jnp.zeros((4,))}
    grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)
    base = run_updates(constant.transformation(theta), params, grads, num_steps)
    got = run_updates(scheduled.transformation(theta, num_steps=num_steps), params, grads, num_steps)
    for t, (a, b) in enumerate(zip(got, base)):
        cosine = final_fraction + (1 - final_fraction) * 0.5 * (1 + np.cos(np.pi * t / num_steps))
        expected = cosine
        if schedule == "warmup_cosine":
            warmup = warmup_fraction * num_steps
            expected = min((t + 1) / warmup, 1.0) * (
                final_fraction + (1 - final_fraction) * 0.5 * (1 + np.cos(np.pi * max(t - warmup, 0) / (num_steps - warmup))))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(np.asarray(u), expected * np.asarray(v), rtol=1e-5, atol=1e-10)


def test_a_traced_learning_rate_scales_the_step_under_vmap():
    optimizer = lopt.get("celo2", learning_rate=1.0)
    theta = optimizer.init(jax.random.key(0))
    params = {"layer": {"w": jax.random.normal(jax.random.key(10), (6, 4)), "b": jnp.ones((4,))}}
    grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)

    def first_update(learning_rate):
        tx = optimizer.transformation(theta, num_steps=10, learning_rate=learning_rate)
        return tx.update(grads, tx.init(params), params)[0]

    rates = jnp.asarray([1e-4, 3e-3, 2e-2])
    batched = jax.jit(jax.vmap(first_update))(rates)
    unit = first_update(1.0)
    for i, rate in enumerate(np.asarray(rates)):
        for u, v in zip(jax.tree.leaves(batched), jax.tree.leaves(unit)):
            np.testing.assert_allclose(np.asarray(u[i]), rate * np.asarray(v), rtol=1e-5, atol=1e-5 * rate)


def test_bare_direction_composes_with_an_optax_schedule():
    optimizer = lopt.get("celo2", learning_rate=2e-3, schedule="cosine", final_fraction=0.05)
    theta = optimizer.init(jax.random.key(0))
    params = {"w": jax.random.normal(jax.random.key(6), (7, 3)), "b": jnp.zeros((3,))}
    grads = jax.tree.map(lambda p: 0.2 * p - 0.01, params)
    schedule = optax.cosine_decay_schedule(2e-3, decay_steps=10, alpha=0.05)
    composed = optax.chain(optimizer.direction(theta), optax.scale_by_learning_rate(schedule))
    for a, b in zip(run_updates(composed, params, grads, 10), run_updates(optimizer.transformation(theta, num_steps=10),
                                                                          params, grads, 10)):
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-10)


def test_works_under_vmap_over_theta():
    optimizer = lopt.get("celo2")
    keys = jax.random.split(jax.random.key(0), 3)
    thetas = [optimizer.init(k) for k in keys]
    params = {"w": jax.random.normal(jax.random.key(7), (5, 4)), "b": jnp.ones((4,)), "v": jnp.arange(3.0)}
    grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)

    def two_updates(theta):
        tx = optimizer.transformation(theta, num_steps=50)
        return run_updates(tx, params, grads, 2)[-1]

    batched = jax.jit(jax.vmap(two_updates))(jax.tree.map(lambda *x: jnp.stack(x), *thetas))
    for i, theta in enumerate(thetas):
        single = jax.jit(two_updates)(theta)
        for u, v in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
            np.testing.assert_allclose(np.asarray(u[i]), np.asarray(v), rtol=1e-5, atol=1e-9)
    assert not np.allclose(np.asarray(batched["w"][0]), np.asarray(batched["w"][1]))


def test_save_and_load_give_identical_updates(tmp_path):
    optimizer = lopt.get("celo2", learning_rate=5e-4, schedule="warmup_cosine", orthogonalize=True,
                         adam_regex=r"bias$")
    theta = jax.tree.map(lambda x: x + 0.1, optimizer.init(jax.random.key(0)))
    loaded = lopt.load(lopt.save(tmp_path / "celo2.lopt", optimizer, theta, provenance={"test": True}))
    as_lists = lambda config: {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    assert as_lists(loaded.optimizer.config) == as_lists(optimizer.config)
    assert loaded.optimizer.ns_coeffs == optimizer.ns_coeffs
    params = {"w": jax.random.normal(jax.random.key(8), (6, 5)), "bias": jnp.ones((5,))}
    grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)
    expected = run_updates(optimizer.transformation(theta, num_steps=20), params, grads, 3)
    got = run_updates(loaded.transformation(num_steps=20), params, grads, 3)
    for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        lopt.get("celo2", schedule="linear")
    with pytest.raises(ValueError, match="not a regular expression"):
        lopt.get("celo2", adam_regex="(")
    optimizer = lopt.get("celo2", schedule="cosine")
    with pytest.raises(ValueError, match="needs the run length"):
        optimizer.transformation(optimizer.init(jax.random.key(0)))
    tx = optimizer.transformation(optimizer.init(jax.random.key(0)), num_steps=10)
    params = {"w": jnp.ones((2, 2))}
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize("shape, block_size", [((40, 24), 8192), ((24, 40), 8192), ((7, 7), 8192), ((90, 13), 64),
                                               ((13, 90), 64), ((33, 50), 100)])
def test_matrix_path_matches_the_literal_definition(shape, block_size):
    """The folded, rank-1 and (for small block sizes) blocked matrix path equals the materialised channels path."""
    theta = jax.tree.map(lambda x: x + 0.05, lopt.get("celo2").init(jax.random.key(0)))
    keys = jax.random.split(jax.random.key(9), 3)
    p = jax.random.normal(keys[0], shape)
    moments = celo2_lib._init_moments(p)
    for key in keys[1:]:
        g = jax.random.normal(key, shape) * jnp.linspace(0.1, 2.0, shape[1])
        moments = celo2_lib._update_moments(moments, g)
    for orthogonalize in (False, True):
        expected = jax.jit(lambda *args: celo2_lib.tensor_direction(*args, orthogonalize))(theta, g, p, moments)
        got = jax.jit(lambda th, g, p, m: celo2_lib.rule_directions(
            th, [g], [p], [m], orthogonalize, block_size=block_size)[0])(theta, g, p, moments)
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=2e-4, atol=2e-5)
