# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # 3. Meta-training with PES from Python
#
# Meta-training adjusts a learned optimizer's meta-parameters so that the inner training runs
# it drives reach low loss. lopt does it with **Persistent Evolution Strategies (PES)**: each
# meta-step advances a batch of inner runs by one *truncation* (a few inner steps) at
# `theta + eps` and `theta - eps`, and turns the loss difference into a gradient estimate that
# stays unbiased across truncations because each task remembers the perturbations applied so
# far in its current inner run.
#
# `lopt-meta-train --config FILE` does all of this from a config file, with checkpoints,
# progress bars and TensorBoard. Here are the same pieces from Python, which is what you use
# to experiment with a new estimator or family.

# %%
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import lopt
import meta_train
import tasks

# %% [markdown]
# ## The four pieces: a family, an optimizer, an estimator, a horizon
#
# The family is 10-dimensional quadratic bowls with condition numbers from 1 to 1,000 (no
# data, so the meta-steps are cheap). Every inner run lasts 60 steps (`ConstantHorizon`), and
# each meta-step advances 8 tasks by 10 steps with antithetic perturbations of size 0.01.

# %%
NUM_META_STEPS = 200  # a real run: thousands (configs/quickstart.py uses 1,500 on digits MLPs)
HORIZON = 60          # a real run: the training length you care about, or LogUniformHorizon(100, 2000)

family = tasks.get("quadratic", dim=10, min_condition=1.0, max_condition=1e3)
optimizer = lopt.get("small_fc_lopt", step_mult=1e-2)
estimator = meta_train.PES(num_tasks=8, trunc_length=10, std=0.01)
trainer = meta_train.Trainer(
    family, optimizer,
    estimator=estimator,
    horizon=meta_train.ConstantHorizon(HORIZON),
    meta_optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3)))

# %% [markdown]
# `trainer.init` samples the first tasks and initial meta-parameters; `trainer.step` is one
# jitted meta-step and returns the new state and scalar metrics. The state is a pytree of
# arrays, so `orbax` checkpoints it (that is how the command line resumes bit for bit).

# %%
state = trainer.init(jax.random.key(0))
initial_meta_params = state.meta_params
history = []
start = time.perf_counter()
for meta_step in range(NUM_META_STEPS):
    state, metrics = trainer.step(state)
    history.append(float(metrics["meta_loss"]))
    if meta_step % 100 == 0:
        print(f"meta-step {meta_step:4d}  meta-loss {history[-1]:.4f}")
print(f"{NUM_META_STEPS} meta-steps in {time.perf_counter() - start:.1f} s "
      f"({trainer.inner_steps_per_meta_step * NUM_META_STEPS:,} inner steps)")
print("metrics of the last meta-step:", sorted(metrics))

# %% [markdown]
# The meta-loss is the mean normalised inner loss over the truncation's steps, so it is noisy:
# each meta-step sees different tasks at different points of their runs. A moving average
# shows the trend.

# %%
window = 20
smoothed = np.convolve(history, np.ones(window) / window, mode="valid")
plt.figure(figsize=(6, 3.5))
plt.plot(history, alpha=0.3, label="per meta-step")
plt.plot(np.arange(window - 1, len(history)), smoothed, label=f"mean of {window}")
plt.yscale("log")
plt.xlabel("meta-step")
plt.ylabel("meta-loss (normalised)")
plt.legend()
plt.title("PES meta-training of small_fc_lopt on quadratics")

# %% [markdown]
# ## Did it learn? Held-out tasks
#
# The test that matters is inner training on tasks meta-training never drew. Below, the
# initial and the meta-trained optimizer each train 16 held-out quadratics for the full
# horizon.

# %%
def inner_curve(meta_params, key):
    """Normalised training loss of one sampled task trained by the optimizer at `meta_params`."""
    task = family.task(family.sample(key))
    params = task.init(jax.random.fold_in(key, 1))
    tx = optimizer.transformation(meta_params, num_steps=HORIZON)

    def step(carry, step_key):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(task.loss)(params, step_key, None)
        updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
        return (optax.apply_updates(params, updates), opt_state), task.normalizer(loss)

    return jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, HORIZON))[1]


held_out = jax.random.split(jax.random.key(10_000), 16)
curves = {name: np.asarray(jax.jit(jax.vmap(lambda k: inner_curve(theta, k)))(held_out))
          for name, theta in [("initial", initial_meta_params), ("meta-trained", state.meta_params)]}
for name, losses in curves.items():
    print(f"{name:13s} mean final normalised loss {losses[:, -1].mean():.4f}")

plt.figure(figsize=(6, 3.5))
for name, losses in curves.items():
    plt.semilogy(np.exp(np.log(losses).mean(axis=0)), label=name)
plt.xlabel("inner step")
plt.ylabel("normalised loss (geometric mean of 16 tasks)")
plt.legend()
plt.title("Held-out quadratics")

# %% [markdown]
# ## The same run from a config file
#
# A config file names the same pieces (`configs/small_fc_lopt_quadratic.py`);
# `meta_train.build.build(config)` turns a config into the family, optimizer and trainer,
# which is exactly what `lopt-meta-train` runs. Keys can be changed from Python as from the
# command line (`--config.meta_train.num_tasks=16`).

# %%
import meta_train.build
from meta_train.config import quadratic_experiment

config = quadratic_experiment("small_fc_lopt", step_mult=1e-2)
config.meta_train.num_tasks = 8
config.meta_train.estimator.kwargs.std = 0.01
run = meta_train.build.build(config)
print(type(run.trainer.estimator).__name__, "with", run.trainer.estimator.num_tasks, "tasks;",
      "horizon", type(run.trainer.horizon).__name__, "of", run.trainer.horizon.min_length, "steps")

# %% [markdown]
# Next: [4. Estimators compared where truncation bias is visible](04_estimators_and_truncation_bias.md).
