# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # 7. Exporting, shipping and loading a trained optimizer
#
# A meta-trained optimizer is worth something only when someone else can use it in one line.
# lopt writes it to an **export file** (`.lopt`): the optimizer's registered name, its
# constructor arguments, its meta-parameters and a provenance record, in a format that is read
# without pickle and without running code, and checked by a SHA-256 digest. From that file it
# loads as an optax transformation in JAX, or as a `torch.optim.Optimizer` in PyTorch.
#
# From the command line, `lopt-meta-train` exports `WORKDIR/optimizer.lopt` at the end of a
# run, and `lopt-export --workdir WORKDIR --out FILE` exports any run's latest checkpoint
# (also of a run that is still going):
#
# ```bash
# lopt-meta-train --config configs/quickstart.py --workdir runs/quickstart
# lopt-export --workdir runs/quickstart --out my_optimizer.lopt
# ```

# %%
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

import lopt
from lopt import export_format

# %% [markdown]
# ## Saving from Python
#
# `lopt.save(path, optimizer, meta_params, provenance)` writes the file atomically (a crash
# never leaves half a file). Here the meta-parameters come from the shipped
# `small_fc_lopt_digits8`; after your own meta-training they are `state.meta_params`
# (tutorial 3). Provenance is any JSON-able dict: what it was trained on, for how long, with
# which command.

# %%
shipped = lopt.pretrained.load("small_fc_lopt_digits8")
path = lopt.save("my_optimizer.lopt", shipped.optimizer, shipped.meta_params,
                 provenance={"trained_on": "digits MLPs", "meta_steps": 1500, "note": "tutorial copy"})
print(f"{path}: {path.stat().st_size:,} bytes")

stored = export_format.read(path)
print("optimizer:", stored.name, stored.config)
print("provenance:", json.dumps(stored.provenance))

# %% [markdown]
# ## Loading it back
#
# `lopt.load` rebuilds the optimizer from the registry and checks that the meta-parameters fit
# it. `.transformation(num_steps=...)` is the optax transformation. Constructor arguments that
# change how the update is computed but not what it computes can be overridden at load time.

# %%
loaded = lopt.load(path)
same = jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), loaded.meta_params, shipped.meta_params))
print("meta-parameters identical after the round trip:", same)
tx = loaded.transformation(num_steps=300)
print(type(tx).__name__)

# %% [markdown]
# A damaged or foreign file is a one-line `lopt.ExportError` naming the file and the problem,
# never a traceback from deep inside a parser:

# %%
damaged = Path("damaged.lopt")
damaged.write_bytes(path.read_bytes()[:-100])
try:
    lopt.load(damaged)
except lopt.ExportError as error:
    print("ExportError:", error)

# %% [markdown]
# ## Shipping it
#
# An export file is the whole optimizer, so shipping means distributing one file: attach it to
# a release, or put it inside your Python package and load it through `importlib.resources`.
# lopt ships its own that way (`lopt.pretrained`); `scripts/ship_pretrained.py` copies an
# export into `lopt/pretrained/` and adds its benchmark figures to the provenance, which
# `lopt.pretrained.info` shows:

# %%
info = lopt.pretrained.info("celo2_generalist")
print(info["optimizer"], {k: info["config"][k] for k in ("learning_rate", "schedule")})
print("provenance keys:", sorted(info["provenance"]))

# %% [markdown]
# ## The same optimizer in PyTorch
#
# `lopt.torch.load(file_or_name, model.named_parameters())` gives a `torch.optim.Optimizer`
# that applies the same update rule (for `small_fc_lopt` and `celo2`; install with
# `pip install "lopt[torch]"`). Below, one MLP starts from identical weights in JAX and in
# PyTorch and sees identical batches; the two loss curves should lie on top of each other.

# %%
import torch

import lopt.torch

NUM_STEPS = 150  # a real check: your model and its full training length
x, y = load_digits(return_X_y=True)
x = (x / 16.0).astype(np.float32)
rng = np.random.default_rng(0)
batches = [rng.choice(len(x), 64, replace=False) for _ in range(NUM_STEPS)]
w1 = (rng.standard_normal((64, 32)) / 8.0).astype(np.float32)
w2 = (rng.standard_normal((32, 10)) / np.sqrt(32.0)).astype(np.float32)


def jax_loss(params, xb, yb):
    logits = jnp.tanh(xb @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()


params = {"w1": jnp.asarray(w1), "b1": jnp.zeros(32), "w2": jnp.asarray(w2), "b2": jnp.zeros(10)}
tx = loaded.transformation(num_steps=NUM_STEPS)
opt_state = tx.init(params)


@jax.jit
def jax_step(params, opt_state, xb, yb):
    loss, grads = jax.value_and_grad(jax_loss)(params, xb, yb)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


jax_losses = []
for rows in batches:
    params, opt_state, loss = jax_step(params, opt_state, x[rows], y[rows])
    jax_losses.append(float(loss))

# torch.nn.Linear stores weights as [out, in]; lopt.torch maps them to JAX's [in, out] layout.
model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
with torch.no_grad():
    model[0].weight.copy_(torch.from_numpy(w1.T.copy())), model[0].bias.zero_()
    model[2].weight.copy_(torch.from_numpy(w2.T.copy())), model[2].bias.zero_()
optimizer = lopt.torch.load(path, model.named_parameters(), num_steps=NUM_STEPS)
torch_losses = []
for rows in batches:
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x[rows])), torch.from_numpy(y[rows]))
    loss.backward()
    optimizer.step()
    torch_losses.append(loss.item())

gap = np.max(np.abs(np.asarray(jax_losses) - np.asarray(torch_losses)))
print(f"largest difference between the JAX and PyTorch losses over {NUM_STEPS} steps: {gap:.2e}")

plt.figure(figsize=(6, 3.5))
plt.semilogy(jax_losses, label="JAX (optax)", linewidth=3, alpha=0.5)
plt.semilogy(torch_losses, "--", label="PyTorch (torch.optim)")
plt.xlabel("step")
plt.ylabel("training loss")
plt.legend()
plt.title("small_fc_lopt_digits8 in JAX and PyTorch")

# %% [markdown]
# Differences of float32 rounding size grow slowly over a run (the two frameworks sum in
# different orders), which is why the test suite compares the rules step by step
# (`tests/test_torch_*.py`) rather than over whole runs.
#
# That is the path end to end: a family (tutorial 1), an optimizer (2), meta-training (3) with
# an estimator chosen knowingly (4), a fair evaluation (5), your own model (6), and a file
# that anyone can load in one line (7).
