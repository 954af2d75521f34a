"""lopt.torch gives the JAX update: 50-step parity on every tensor rank and layout, groups, schedulers, state dicts.

Updates are compared per tensor and step by their norm-wise relative error in float32:
||torch - jax|| <= 1e-5 max(||jax||, the tensor's median ||jax|| over the run). The median
covers a step whose update nearly cancels (a scalar whose MLP output is ~100 times smaller than
usual keeps its absolute float32 error, not its relative one). Each framework applies its own
updates, so differences would compound through the parameter feature. Entry-wise, relative to
the largest entry, errors stay below 1e-5 except on orthogonalised square matrices whose
Newton-Schulz input is ill-conditioned: there float32 rounding alone moves the result by 1e-5
from float64, in JAX as in PyTorch.
"""

from __future__ import annotations

import io
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

import lopt
import lopt.torch
from lopt.torch import from_jax_layout, to_jax_layout

REPO = Path(__file__).resolve().parents[1]
NUM_STEPS = 50
RTOL = 1e-5

# name -> (JAX-view shape, layout of the PyTorch tensor). "transposed" is a non-contiguous PyTorch parameter.
TENSORS = {
    "scale": ((), "torch"),
    "dense.bias": ((9,), "torch"),
    "dense.weight": ((9, 5), "torch"),
    "square.weight": ((6, 6), "torch"),
    "wide.weight": ((4, 20), "torch"),
    "conv.weight": ((3, 3, 4, 6), "torch"),
    "conv_hwio.kernel": ((3, 3, 2, 5), "jax"),
    "transposed": ((7, 5), "torch"),
    "large.weight": ((150, 120), "torch"),  # blocked in JAX's celo2; test_large_tensors_match_jax lowers the others
}
SMALL = tuple(name for name in TENSORS if name != "large.weight")


def gradient_scale(step: int, rng: np.random.Generator) -> float:
    """Normal steps, then zero, tiny and huge gradients, then scales spread over six decades."""
    if step < 10:
        return 1.0
    return {10: 0.0, 11: 0.0, 12: 0.0, 13: 1e-30, 14: 1e-30, 15: 1e-30, 16: 1e15, 17: 1e15}.get(
        step, float(10 ** rng.uniform(-3, 3)))


def make_problem(names=SMALL, seed=0):
    """Returns JAX-view initial parameters and NUM_STEPS gradients for `names` (numpy float32)."""
    rng = np.random.default_rng(seed)
    params = {n: rng.standard_normal(TENSORS[n][0]).astype(np.float32) for n in names}
    grads = [{n: (rng.standard_normal(TENSORS[n][0]) * gradient_scale(t, rng)).astype(np.float32) for n in names}
             for t in range(NUM_STEPS)]
    return params, grads


def torch_tensor(name, array):
    """Returns the PyTorch tensor (in TENSORS' layout) whose JAX view is `array`."""
    tensor = from_jax_layout(torch.from_numpy(np.array(array)), TENSORS[name][1])
    return tensor if name == "transposed" else tensor.contiguous()


def torch_updates(make_optimizer, params, grads, groups=None, after_step=None):
    """Runs the PyTorch optimizer and returns its per-step updates (JAX view, numpy) and final JAX-view params;
    `after_step(optimizer)` runs after every step (e.g. a learning-rate scheduler's step)."""
    groups = groups or [{"names": list(params)}]
    tensors = {n: torch.nn.Parameter(torch_tensor(n, params[n])) for n in params}
    assert not tensors["transposed"].is_contiguous() if "transposed" in tensors else True
    param_groups = [{**{k: v for k, v in g.items() if k != "names"}, "layout": TENSORS[g["names"][0]][1],
                     "params": [(n, tensors[n]) for n in g["names"]]} for g in groups]
    optimizer = make_optimizer(param_groups)
    by_tensor = {id(p): n for n, p in tensors.items()}
    history, recorded = [], {}
    compute = optimizer.group_updates

    def recording(params, grads, states, group, names, loss):
        updates = compute(params, grads, states, group, names, loss)
        for param, update in zip(params, updates):
            recorded[by_tensor[id(param._base if param._base is not None else param)]] = update.numpy().copy()
        return updates

    optimizer.group_updates = recording
    for step_grads in grads:
        for n, p in tensors.items():
            p.grad = torch_tensor(n, step_grads[n])
        optimizer.step()
        history.append(dict(recorded))
        if after_step is not None:
            after_step(optimizer)
    final = {n: to_jax_layout(p.detach(), TENSORS[n][1]).numpy() for n, p in tensors.items()}
    return history, final


def nest(flat):
    """Returns a dict keyed by "a.b" names as the nested JAX tree {"a": {"b": ...}}."""
    tree = {}
    for name, value in flat.items():
        *outer, last = name.split(".")
        node = tree
        for key in outer:
            node = node.setdefault(key, {})
        node[last] = value
    return tree


def jax_updates(transformations, params, grads):
    """Runs one optax transformation per group of names ({tx: names}) and returns per-step updates and final params."""
    history = [dict() for _ in grads]
    final = {}
    for tx, names in transformations:
        tree = nest({n: jnp.asarray(params[n]) for n in names})
        state = tx.init(tree)
        update = jax.jit(tx.update)
        for t, step_grads in enumerate(grads):
            updates, state = update(nest({n: jnp.asarray(step_grads[n]) for n in names}), state, tree)
            tree = optax.apply_updates(tree, updates)
            flat = {n: np.asarray(leaf) for n, leaf in zip(names, _leaves_by_name(updates, names))}
            history[t].update(flat)
        final.update({n: np.asarray(leaf) for n, leaf in zip(names, _leaves_by_name(tree, names))})
    return history, final


def _leaves_by_name(tree, names):
    for name in names:
        node = tree
        for key in name.split("."):
            node = node[key]
        yield node


def assert_same_updates(torch_run, jax_run):
    """Every tensor's update at every step within RTOL (norm-wise, see the module docstring) of the JAX update;
    final params close."""
    (torch_history, torch_final), (jax_history, jax_final) = torch_run, jax_run
    assert len(torch_history) == len(jax_history) == NUM_STEPS
    typical = {name: np.median([np.linalg.norm(step[name]) for step in jax_history]) for name in jax_history[0]}
    for step, (got, want) in enumerate(zip(torch_history, jax_history)):
        assert got.keys() == want.keys()
        for name in want:
            assert got[name].shape == want[name].shape, (step, name)
            error, scale = np.linalg.norm(got[name] - want[name]), np.linalg.norm(want[name])
            assert error <= RTOL * max(scale, typical[name]), \
                f"step {step}, {name}: error norm {error:.3g}, update norm {scale:.3g}, median {typical[name]:.3g}"
    for name in jax_final:
        np.testing.assert_allclose(torch_final[name], jax_final[name], rtol=RTOL, atol=1e-6)


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
    optimizer = lopt.SmallFcLOpt(step_mult=1e-2)
    theta = optimizer.init(jax.random.key(3))
    return lopt.save(tmp_path_factory.mktemp("mlp") / "mlp.lopt", optimizer, theta), optimizer, theta


# The generalist's learning rate. At 1e-2 the parameter feature feeds float32 Newton-Schulz rounding (about 1e-6
# per step, as far from float64 as JAX's own result) back into later updates (7.7e-6 norm-wise on a 6x6 matrix).
CELO2_LR = 1e-3


def save_celo2(folder, **kwargs):
    """Saves a Celo2 with random meta-params (its own init) and constructor `kwargs`; returns (path, theta)."""
    optimizer = lopt.Celo2(**{"learning_rate": CELO2_LR, "weight_decay": 0.1, "adam_regex": r"bias$|^scale$", **kwargs})
    theta = optimizer.init(jax.random.key(4))
    return lopt.save(Path(folder) / "celo2.lopt", optimizer, theta), theta


@pytest.mark.parametrize("mup", [False, True])
def test_small_fc_lopt_matches_jax_on_every_rank_and_layout(mlp_file, mup):
    path, optimizer, theta = mlp_file
    params, grads = make_problem()
    want = jax_updates([(lopt.SmallFcLOpt(step_mult=1e-2, mup=mup).transformation(theta), list(SMALL))], params, grads)
    groups = [{"names": [n for n in SMALL if TENSORS[n][1] == layout]} for layout in ("torch", "jax")]
    got = torch_updates(lambda g: lopt.torch.load(path, g, mup=mup), params, grads, groups)
    assert_same_updates(got, want)


def test_shipped_small_fc_lopt_matches_jax():
    params, grads = make_problem(("dense.weight", "dense.bias", "conv.weight", "transposed"), seed=1)
    shipped = lopt.pretrained.load("small_fc_lopt_fmnist8")
    want = jax_updates([(shipped.transformation(), list(params))], params, grads)
    got = torch_updates(lambda g: lopt.torch.load("small_fc_lopt_fmnist8", g), params, grads)
    assert_same_updates(got, want)


@pytest.mark.parametrize("orthogonalize, schedule", [(True, "constant"), (False, "warmup_cosine")])
def test_celo2_matches_jax_on_every_rank_and_layout(tmp_path, orthogonalize, schedule):
    path, theta = save_celo2(tmp_path, orthogonalize=orthogonalize, schedule=schedule)
    params, grads = make_problem()
    jax_optimizer = lopt.load(path).optimizer
    want = jax_updates([(jax_optimizer.transformation(theta, num_steps=NUM_STEPS), list(SMALL))], params, grads)
    groups = [{"names": [n for n in SMALL if TENSORS[n][1] == layout]} for layout in ("torch", "jax")]
    got = torch_updates(lambda g: lopt.torch.load(path, g, num_steps=NUM_STEPS), params, grads, groups)
    assert_same_updates(got, want)


@pytest.mark.parametrize("architecture", ["mlp", "celo2"])
def test_large_tensors_match_jax(tmp_path, monkeypatch, architecture):
    """A tensor processed alone and in column blocks (block sizes lowered to 4096 so that an 18,000-entry matrix
    takes those paths on both sides); small_fc_lopt here also reads the training fraction."""
    monkeypatch.setattr(lopt.torch.small_fc_lopt, "PACK_LIMIT", 4096)
    monkeypatch.setattr(lopt.torch.small_fc_lopt, "COLUMN_BLOCK", 4096)
    monkeypatch.setattr(lopt.torch.celo2, "COLUMN_BLOCK", 4096)
    params, grads = make_problem(("large.weight", "dense.bias", "scale"), seed=5)
    if architecture == "mlp":
        optimizer = lopt.SmallFcLOpt(step_mult=1e-2, fraction_features=True, block_size=4096)
        path = lopt.save(tmp_path / "mlp.lopt", optimizer, optimizer.init(jax.random.key(6)))
    else:
        path, _ = save_celo2(tmp_path)
    loaded = lopt.load(path)
    want = jax_updates([(loaded.transformation(num_steps=NUM_STEPS), list(params))], params, grads)
    got = torch_updates(lambda g: lopt.torch.load(path, g, num_steps=NUM_STEPS), params, grads)
    assert_same_updates(got, want)


def test_parameter_groups_take_their_own_settings(tmp_path, mlp_file):
    path, theta = save_celo2(tmp_path)
    names = ("dense.weight", "dense.bias", "square.weight", "scale", "conv.weight")
    params, grads = make_problem(names, seed=2)
    groups = [{"names": ["dense.weight", "dense.bias"], "lr": 3e-3, "weight_decay": 0.0},
              {"names": ["square.weight", "conv.weight"]},
              {"names": ["scale"], "branch": "rule"}]
    jax_celo2 = lambda **kw: lopt.Celo2(**{"learning_rate": CELO2_LR, "weight_decay": 0.1,
                                          "adam_regex": r"bias$|^scale$", **kw}).transformation(theta)
    want = jax_updates([(jax_celo2(learning_rate=3e-3, weight_decay=0.0), groups[0]["names"]),
                        (jax_celo2(), groups[1]["names"]), (jax_celo2(adam_regex=""), groups[2]["names"])], params, grads)
    assert_same_updates(torch_updates(lambda g: lopt.torch.load(path, g), params, grads, groups), want)

    mlp_path, _, mlp_theta = mlp_file
    groups = [{"names": ["dense.weight", "conv.weight"], "lr": 0.5, "mup": True}, {"names": ["dense.bias", "scale"]}]
    scaled_mup = optax.chain(lopt.SmallFcLOpt(step_mult=1e-2, mup=True).transformation(mlp_theta), optax.scale(0.5))
    want = jax_updates([(scaled_mup, groups[0]["names"]),
                        (lopt.SmallFcLOpt(step_mult=1e-2).transformation(mlp_theta), groups[1]["names"])], params, grads)
    assert_same_updates(torch_updates(lambda g: lopt.torch.load(mlp_path, g), params, grads, groups), want)


def test_celo2_follows_a_torch_learning_rate_scheduler(tmp_path):
    path, theta = save_celo2(tmp_path)
    params, grads = make_problem(("dense.weight", "dense.bias", "conv.weight"), seed=3)
    learning_rates, schedulers = [], []

    def make(groups):
        optimizer = lopt.torch.load(path, groups)
        schedulers.append(torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=NUM_STEPS,
                                                                        cycle_momentum=False))
        learning_rates.append(optimizer.param_groups[0]["lr"])
        return optimizer

    def after_step(optimizer):
        schedulers[0].step()
        learning_rates.append(optimizer.param_groups[0]["lr"])

    got = torch_updates(make, params, grads, after_step=after_step)
    assert len(set(learning_rates)) > NUM_STEPS // 2
    table = jnp.asarray(learning_rates[:NUM_STEPS], jnp.float32)
    direction = lopt.load(path).optimizer.direction(theta)
    tx = optax.chain(direction, optax.scale_by_learning_rate(lambda count: table[count]))
    assert_same_updates(got, jax_updates([(tx, list(params))], params, grads))


@pytest.mark.parametrize("architecture", ["mlp", "celo2"])
def test_state_dict_round_trip_resumes_to_identical_updates(tmp_path, mlp_file, architecture):
    path = mlp_file[0] if architecture == "mlp" else save_celo2(tmp_path, schedule="cosine")[0]
    params, grads = make_problem(("dense.weight", "dense.bias", "conv.weight", "scale"), seed=4)

    def model():
        tensors = [(n, torch.nn.Parameter(torch_tensor(n, params[n]))) for n in params]
        tensors.append(("half", torch.nn.Parameter(torch.linspace(-1, 1, 8, dtype=torch.bfloat16))))
        return tensors

    def run(tensors, optimizer, steps):
        updates = []
        for t in steps:
            before = [p.detach().clone() for _, p in tensors]
            for (n, p), grad in zip(tensors, [*(torch_tensor(n, grads[t][n]) for n in params), None]):
                p.grad = grad if grad is not None else torch.full_like(p, 0.1 * (t + 1))
            optimizer.step()
            updates.append([p.detach() - b for (_, p), b in zip(tensors, before)])
        return updates

    straight = model()
    expected = run(straight, lopt.torch.load(path, straight, num_steps=NUM_STEPS), range(NUM_STEPS))
    first = model()
    optimizer = lopt.torch.load(path, first, num_steps=NUM_STEPS)
    run(first, optimizer, range(20))
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    resumed = [(n, torch.nn.Parameter(p.detach().clone())) for n, p in first]
    optimizer = lopt.torch.load(path, resumed, num_steps=NUM_STEPS)
    optimizer.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert all(v.dtype == torch.float32 for v in optimizer.state[resumed[-1][1]].values() if torch.is_tensor(v))
    got = run(resumed, optimizer, range(20, NUM_STEPS))
    for step_got, step_want in zip(got, expected[20:]):
        for a, b in zip(step_got, step_want):
            assert torch.equal(a, b)
    assert any(bool(torch.any(u != 0)) for u in got[-1])


REFERENCE_DIR = REPO.parent / "shared" / "reference" / "celo2"


@pytest.mark.parametrize("variant, orthogonalize", [("celo2base", False), ("celo2", True)])
def test_celo2_reproduces_the_authors_trajectory_in_pytorch(tmp_path, variant, orthogonalize):
    """The authors' own 20-step trajectories (a JAX-layout conv kernel, a matrix, a bias, a scalar) in PyTorch."""
    path = REFERENCE_DIR / f"{variant}_reference_trajectory.npz"
    if not path.exists():
        pytest.skip(f"reference data not found at {path}")
    data = np.load(path)
    from lopt import celo2 as celo2_lib
    theta = celo2_lib.celo2_meta_params_from_reference({k: data[k] for k in data.files if k.startswith("theta/")})
    keys = {"conv": "['conv']", "dense.b": "['dense']['b']", "dense.w": "['dense']['w']", "scale": "['scale']"}
    tensors = {n: torch.nn.Parameter(torch.from_numpy(np.array(data["init/" + k]))) for n, k in keys.items()}
    optimizer = lopt.torch.Celo2(list(tensors.items()), theta, orthogonalize=orthogonalize, lr=1e-3, layout="jax",
                                 adam_regex=celo2_lib.DEFAULT_ADAM_REGEX if orthogonalize else "")
    for t in range(20):
        for n, k in keys.items():
            tensors[n].grad = torch.from_numpy(np.array(data[f"grad/{t}/{k}"]))
        optimizer.step()
        for n, k in keys.items():
            start, want = data["init/" + k], data[f"params/{t}/{k}"]
            moved, want_moved = tensors[n].detach().numpy() - start, want - start
            rounding = 4 * np.finfo(np.float32).eps * np.max(np.abs(want))
            assert np.max(np.abs(moved - want_moved)) <= RTOL * np.max(np.abs(want_moved)) + rounding, (t, n)
