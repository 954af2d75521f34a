"""lopt.torch as a PyTorch user meets it: closures and the loss, layouts, one-line errors, no JAX, the example, the README."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import torch

import lopt
import lopt.torch
from lopt.torch import from_jax_layout, to_jax_layout
from tests.test_torch_optim import REPO, save_celo2


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
    optimizer = lopt.SmallFcLOpt(step_mult=1e-2)
    return lopt.save(tmp_path_factory.mktemp("mlp") / "mlp.lopt", optimizer, optimizer.init(jax.random.key(3)))


def test_step_closure_returns_the_loss_and_trains(tmp_path):
    torch.manual_seed(0)
    inputs, targets = torch.randn(64, 8), torch.randn(64, 1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    optimizer = lopt.torch.load("small_fc_lopt_digits8", model.parameters())
    calls = []

    def closure():
        assert torch.is_grad_enabled()
        calls.append(1)
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        loss.backward()
        return loss

    losses = [float(optimizer.step(closure).detach()) for _ in range(150)]
    assert len(calls) == 150
    assert losses[-1] < 0.3 * losses[0]


def test_loss_can_be_passed_to_step_and_is_returned(tmp_path):
    path, _ = save_celo2(tmp_path)
    outcomes = []
    for loss in (None, torch.tensor(2.5)):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        optimizer = lopt.torch.load(path, model.named_parameters())
        model(torch.ones(2, 4)).square().sum().backward()
        returned = optimizer.step(loss=loss) if loss is not None else optimizer.step()
        outcomes.append((returned, model.weight.detach().clone()))
    assert outcomes[0][0] is None and float(outcomes[1][0]) == 2.5
    assert torch.equal(outcomes[0][1], outcomes[1][1])


def test_layouts_map_pytorch_weights_to_the_jax_arrays_they_equal(tmp_path):
    kernel = np.arange(3 * 3 * 4 * 6, dtype=np.float32).reshape(3, 3, 4, 6)
    torch_kernel = torch.from_numpy(kernel).permute(3, 2, 0, 1)
    assert tuple(torch_kernel.shape) == (6, 4, 3, 3)
    assert torch.equal(to_jax_layout(torch_kernel, "torch"), torch.from_numpy(kernel))
    assert torch.equal(from_jax_layout(torch.from_numpy(kernel), "torch"), torch_kernel)
    assert lopt.torch.jax_shape((6, 4, 3, 3), "torch") == (3, 3, 4, 6) and lopt.torch.jax_shape((5, 9), "torch") == (9, 5)
    assert torch.equal(to_jax_layout(torch_kernel, "jax"), torch_kernel)

    path, _ = save_celo2(tmp_path, adam_regex="")
    updates = {}
    for layout in ("torch", "jax"):
        weight = torch.nn.Parameter(torch_kernel.clone().contiguous() / kernel.size)
        optimizer = lopt.torch.load(path, [weight], layout=layout)
        weight.grad = torch.cos(weight.detach() * 50)
        optimizer.step()
        updates[layout] = weight.detach() - torch_kernel / kernel.size
    # Read as a JAX array of shape [6, 4, 3, 3], the kernel is orthogonalised over the wrong axes.
    difference = torch.max(torch.abs(updates["torch"] - updates["jax"])) / torch.max(torch.abs(updates["torch"]))
    assert difference > 0.1


def test_mistakes_are_one_line_errors(tmp_path, mlp_file):
    weight = torch.nn.Parameter(torch.zeros(3, 2))
    other = lopt.get("adam_multiplier")
    unsupported = lopt.save(tmp_path / "other.lopt", other, other.init(jax.random.key(0)))
    cases = [
        (lambda: lopt.torch.load(unsupported, [weight]), "no PyTorch version of the 'adam_multiplier'.*supported: small_fc_lopt, celo2"),
        (lambda: lopt.torch.load("no_such_optimizer", [weight]), "no such export file or shipped optimizer.*small_fc_lopt"),
        (lambda: lopt.torch.load(mlp_file, [weight], learning_rate=1.0), "no setting 'learning_rate'; settings: lr"),
        (lambda: lopt.torch.load(mlp_file, [weight], layout="nchw"), "unknown layout 'nchw'; choose from torch, jax"),
        (lambda: lopt.torch.load(mlp_file, [{"params": [weight], "momentum": 0.9}]), "no setting 'momentum'"),
        (lambda: lopt.torch.load(save_celo2(tmp_path)[0], [weight]), "pass model.named_parameters\\(\\)"),
        (lambda: lopt.torch.load(save_celo2(tmp_path, schedule="cosine")[0], [("w", weight)]), "needs the run length"),
        (lambda: lopt.torch.SmallFCLOpt([weight], {"w0": np.zeros((3, 3))}), "meta-params have shapes"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message) as caught:
            make()
        assert "\n" not in str(caught.value)


def test_torch_side_runs_without_jax(tmp_path):
    """lopt.torch and the export reader import no JAX: they run with `jax` unimportable and lopt's JAX modules unloaded."""
    script = textwrap.dedent(f"""
        import sys, types
        sys.modules["jax"] = None
        package = types.ModuleType("lopt")
        package.__path__ = [{str(REPO / "lopt")!r}]
        sys.modules["lopt"] = package
        import torch, lopt.torch
        model = torch.nn.Linear(3, 2)
        optimizer = lopt.torch.load("small_fc_lopt_digits8", model.parameters())
        model(torch.ones(1, 3)).sum().backward()
        before = model.weight.detach().clone()
        optimizer.step()
        assert not torch.equal(before, model.weight)
        assert not [n for n, m in sys.modules.items() if m is not None and n.startswith(("jax", "optax", "flax"))]
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_readme_pytorch_example_trains():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Using a trained optimizer from PyTorch"):]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    losses = []
    for steps in ("range(1)", "range(100)"):
        torch.manual_seed(0)
        namespace = {}
        exec(compile(block.replace("range(100)", steps), "README-torch", "exec"), namespace)
        losses.append(float(namespace["loss"].detach()))
    assert losses[1] < 0.5 * losses[0]

def test_example_runs_from_one_command(tmp_path, shared_data_dir):
    out = tmp_path / "curves"
    command = [sys.executable, str(REPO / "examples" / "torch_mnist_mlp.py"), "--data-dir", str(shared_data_dir),
               "--steps", "30", "--seeds", "0", "--adam-lrs", "0.01", "0.1", "--threads", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    table = out.with_suffix(".md").read_text()
    assert "| small_fc_lopt_fmnist8 |" in table and "| Adam (tuned lr " in table
    assert out.with_suffix(".png").stat().st_size > 10_000 and out.with_suffix(".json").is_file()
    missing = subprocess.run(command[:2] + ["--data-dir", str(tmp_path)], capture_output=True, text=True, env=env)
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0 and "lacks" in missing.stderr
