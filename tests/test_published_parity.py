"""Published learned optimizers: the importer, and 20-step parity with the reference code's own trajectories.

The trajectories in ../shared/reference were computed by the authors' code (amoudgl/celo on
google/learned_optimization, and learned_optimization's MLPLOpt and AdafacMLPLOpt): initial
parameters, the gradient and loss fed at each step, and the parameters after each update.
"""

from __future__ import annotations

import re
from pathlib import Path

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lopt
from lopt import published

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
CASES = {
    "celo": ("celo/celo_phase2_theta.state", "celo/celo_reference_trajectory.npz", "celo_lo"),
    "mlp": ("learned_optimization/lo_mlp_lopt_theta.state",
            "learned_optimization/lo_mlp_lopt_reference_trajectory.npz", "small_fc_lopt"),
    "adafac_mlp": ("learned_optimization/lo_adafac_mlp_lopt_theta.state",
                   "learned_optimization/lo_adafac_mlp_lopt_reference_trajectory.npz", "adafac_mlp_lo"),
}
NUM_STEPS = 20
RTOL = 1e-5


def reference_file(name: str) -> Path:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"reference file {path} not present")
    return path


def tree_at(trajectory, prefix: str):
    """Rebuilds the nested-dict pytree stored under keys `prefix + keystr(path)`."""
    tree = {}
    for key in trajectory.files:
        if key.startswith(prefix):
            names = re.findall(r"\['([^']*)'\]", key[len(prefix):])
            node = tree
            for name in names[:-1]:
                node = node.setdefault(name, {})
            node[names[-1]] = trajectory[key]
    assert tree, f"no arrays under {prefix}"
    return tree


def assert_close(ours, reference, what: str) -> float:
    """Asserts every tensor is within RTOL of the reference, relative to the tensor's largest magnitude."""
    worst = 0.0
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(ours)[0], jax.tree.leaves(reference)):
        error = float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))
        assert error <= RTOL, f"{what} {jax.tree_util.keystr(path)}: relative error {error:.2e}"
        worst = max(worst, error)
    return worst


@pytest.mark.parametrize("architecture", sorted(CASES))
def test_trajectory_matches_reference_code(architecture, tmp_path):
    state_file, trajectory_file, name = CASES[architecture]
    trajectory = np.load(reference_file(trajectory_file))
    imported = lopt.import_learned_optimization(reference_file(state_file))
    assert imported.name == name and imported.provenance["imported"]["architecture"] == architecture
    export = lopt.save(tmp_path / "published.lopt", imported.optimizer, imported.meta_params, imported.provenance)
    loaded = lopt.load(export)
    assert loaded.provenance == imported.provenance

    tx = loaded.transformation(num_steps=100)
    params = jax.tree.map(jnp.asarray, tree_at(trajectory, "init/"))
    state = tx.init(params)
    update = jax.jit(tx.update)
    first_update = None
    for t in range(NUM_STEPS):
        updates, state = update(tree_at(trajectory, f"grad/{t}/"), state, params, loss=trajectory["losses"][t])
        first_update = updates if first_update is None else first_update
        params = optax.apply_updates(params, updates)
        assert_close(params, tree_at(trajectory, f"params/{t}/"), f"step {t}")

    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), tree_at(trajectory, f"params/{NUM_STEPS - 1}/"),
                         tree_at(trajectory, "init/"))
    assert min(jax.tree.leaves(moved)) > 0, "every tensor of the reference moves, so the comparison is not vacuous"

    in_memory = imported.transformation(num_steps=100)
    init = jax.tree.map(jnp.asarray, tree_at(trajectory, "init/"))
    same, _ = jax.jit(in_memory.update)(tree_at(trajectory, "grad/0/"), in_memory.init(init), init,
                                        loss=trajectory["losses"][0])
    jax.tree.map(np.testing.assert_array_equal, same, first_update)


@pytest.mark.parametrize("architecture", ["mlp", "adafac_mlp"])
def test_imported_meta_params_are_the_stored_theta(architecture):
    state_file, trajectory_file, _ = CASES[architecture]
    theta = tree_at(np.load(reference_file(trajectory_file)), "theta/")
    meta_params = lopt.import_learned_optimization(reference_file(state_file)).meta_params
    if architecture == "mlp":
        mapped = {f"{kind}{i}": theta[f"mlp/~/linear_{i}"][kind] for i in range(3) for kind in "wb"}
    else:
        mapped = {"mlp": {k: v for k, v in theta["nn"]["~"].items()},
                  "decays": {k: theta[f"{k}_decays"] for k in ("momentum", "rms", "adafactor")}}
    jax.tree.map(np.testing.assert_array_equal, meta_params, mapped)


def test_celo_update_needs_the_loss():
    loaded = lopt.import_learned_optimization(reference_file(CASES["celo"][0]))
    tx = loaded.transformation(num_steps=10)
    params = {"w": jnp.ones((2, 3))}
    with pytest.raises(ValueError, match="needs the loss"):
        tx.update(params, tx.init(params), params)


def assert_one_line_error(path: Path, architecture, *fragments: str) -> str:
    with pytest.raises(published.PublishedCheckpointError) as info:
        lopt.import_learned_optimization(path, architecture)
    message = str(info.value)
    assert isinstance(info.value, lopt.ExportError) and "\n" not in message and message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_truncated_file_is_a_one_line_error(tmp_path):
    data = reference_file(CASES["celo"][0]).read_bytes()
    truncated = tmp_path / "theta.state"
    truncated.write_bytes(data[: len(data) // 2])
    assert_one_line_error(truncated, "celo", "not a learned_optimization checkpoint", "does not decode")


def test_wrong_architecture_is_a_one_line_error():
    assert_one_line_error(reference_file(CASES["mlp"][0]), "celo", "not a learned_optimization celo checkpoint",
                          "missing key ['ff_mod_stack']", "looks like a learned_optimization mlp checkpoint")
    assert_one_line_error(reference_file(CASES["celo"][0]), "adafac_mlp", "missing key ['nn']", "looks like")


def test_random_bytes_are_a_one_line_error(tmp_path):
    noise = tmp_path / "noise.state"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_one_line_error(noise, None, "not a learned_optimization checkpoint")


def test_shape_mismatch_names_the_key(tmp_path):
    tree = flax.serialization.msgpack_restore(reference_file(CASES["celo"][0]).read_bytes())
    tree["rnn_params"]["linear_2"]["w"] = tree["rnn_params"]["linear_2"]["w"][:, :63]
    damaged = tmp_path / "theta.state"
    damaged.write_bytes(flax.serialization.msgpack_serialize(tree))
    assert_one_line_error(damaged, "celo", "['rnn_params']['linear_2']['w'] has shape (18, 63)", "(18, 64)")


def test_command_line_converts_and_reports_errors(tmp_path, capsys):
    out = tmp_path / "celo.lopt"
    assert published.main([str(reference_file(CASES["celo"][0])), str(out), "--architecture", "celo"]) == 0
    assert "celo_lo" in capsys.readouterr().out
    loaded = lopt.load(out)
    assert loaded.name == "celo_lo" and loaded.provenance["imported"]["format"] == "learned_optimization"
    wrong = [str(reference_file(CASES["mlp"][0])), str(tmp_path / "x.lopt"), "--architecture", "celo"]
    assert published.main(wrong) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "missing key ['ff_mod_stack']" in error
    assert not (tmp_path / "x.lopt").exists()


@pytest.mark.parametrize("name", ["celo_lo", "adafac_mlp_lo"])
def test_faithful_variants_take_traced_meta_params(name):
    opt = lopt.get(name)
    theta = opt.init(jax.random.key(0))
    # Nonzero gradients everywhere: Celo's m * v ** -0.5 (as in its authors' code) has a 0 * inf derivative
    # where a gradient is exactly zero, so meta-gradients through it need ES, as its authors used.
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "s": jnp.ones(())}

    def final_loss(theta):
        tx = opt.transformation(theta, num_steps=5)
        loss_fn = lambda p: jnp.sum((p["w"] - 0.5) ** 2) + (p["s"] - 2.0) ** 2
        p, state = params, tx.init(params)
        for _ in range(2):
            loss, grads = jax.value_and_grad(loss_fn)(p)
            updates, state = tx.update(grads, state, p, loss=loss)
            p = optax.apply_updates(p, updates)
        return loss_fn(p)

    grads = jax.jit(jax.grad(final_loss))(theta)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads["mlp"])]
    assert all(np.isfinite(norms)) and max(norms) > 0


def test_celo_lo_phases_split_mlp_and_scheduler():
    opt = lopt.get("celo_lo")
    mask = opt.trainable_mask(opt.init(jax.random.key(0)), "scheduler")
    assert not any(jax.tree.leaves(mask["mlp"])) and all(jax.tree.leaves(mask["scheduler"]))
    with pytest.raises(lopt.LearnedOptimizerError, match="no meta-training phase 'lstm'"):
        opt.trainable_mask(opt.init(jax.random.key(0)), "lstm")


def test_readme_example_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    block = next(b for b in blocks if "import_learned_optimization" in b)
    command = next(line for line in readme.splitlines() if line.startswith("lopt-import "))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "theta.state").write_bytes(reference_file(CASES["celo"][0]).read_bytes())
    exec(compile(block, "README-published", "exec"), {})
    assert lopt.load(tmp_path / "celo.lopt").name == "celo_lo"
    assert published.main(command.split()[1:]) == 0
