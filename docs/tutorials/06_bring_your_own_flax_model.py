# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # 6. Bringing your own flax model
#
# The fastest way to meta-train an optimizer for *your* problem is to hand lopt the model you
# already have. `tasks.from_flax(model, data, loss, ...)` turns a `flax.linen` module, an
# in-memory dataset and a loss into a task family; task-to-task variations that change no
# shape (init scale, label noise, a data subset) are declared as arguments. The family is then
# meta-trained like any built-in one, and the result drops back into a plain
# `flax.training.train_state` loop.

# %%
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax.training import train_state
from sklearn.datasets import load_digits

import lopt
import meta_train
import tasks

# %% [markdown]
# ## The model, the data, the loss
#
# A small residual MLP with layer norm on scikit-learn's 8x8 digits (scaled to [0, 1] here:
# the adapter uses arrays as given).

# %%
class ResidualMLP(nn.Module):
    width: int = 32

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.width)(x.reshape(x.shape[0], -1))
        x = x + nn.Dense(self.width)(nn.gelu(nn.LayerNorm()(x)))
        return nn.Dense(10)(nn.gelu(x))


x, y = load_digits(return_X_y=True)
family = tasks.from_flax(ResidualMLP(), (x / 16.0, y), loss="cross_entropy", batch_size=64,
                         init_scale=(0.5, 2.0), label_noise=(0.0, 0.2), name="digits_resmlp")
report = tasks.validate(family, num_tasks=2, steps=20)
print("parameter shapes:", report.param_shapes)
print("a task configuration:", jax.tree.map(jnp.shape, family.sample(jax.random.key(0))))

# %% [markdown]
# Every task draws its own init scale (0.5x to 2x flax's initialisation) and label noise (up to
# 20% of the training labels replaced), so the optimizer meta-trained on this family has to
# cope with both. Mistakes (labels that do not fit the logits, a model that does not take the
# inputs, an unknown loss) are one-line `tasks.TaskError`s raised here, before anything is
# compiled.
#
# ## Meta-train on it
#
# Start from the shipped `small_fc_lopt_digits8` (meta-trained on hand-written digits MLPs)
# and fine-tune it on this family with PES.

# %%
NUM_META_STEPS, HORIZON = 60, 80  # a real run: thousands of meta-steps, your training length

shipped = lopt.pretrained.load("small_fc_lopt_digits8")
trainer = meta_train.Trainer(
    family, shipped.optimizer,
    estimator=meta_train.PES(num_tasks=4, trunc_length=10, std=0.01),
    horizon=meta_train.ConstantHorizon(HORIZON),
    meta_optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)))
state = trainer.init(jax.random.key(0), meta_params=shipped.meta_params)
meta_losses = []
for _ in range(NUM_META_STEPS):
    state, metrics = trainer.step(state)
    meta_losses.append(float(metrics["meta_loss"]))
print(f"meta-loss, first 10 meta-steps {np.mean(meta_losses[:10]):.3f}, last 10 {np.mean(meta_losses[-10:]):.3f}")

path = lopt.save("digits_resmlp.lopt", shipped.optimizer, state.meta_params,
                 provenance={"family": family.name, "meta_steps": NUM_META_STEPS, "started_from": "small_fc_lopt_digits8"})
print("exported", path)

# %% [markdown]
# ## Use it in a flax `TrainState` loop
#
# `TrainState.apply_gradients` calls `tx.update(grads, opt_state, params)`, which is all a
# learned optimizer needs. Below the exported optimizer and Adam (best of two learning
# rates) train the model on a fixed, noise-free training set. (To pass the loss to optimizers
# that read it, call `tx.update(grads, state.opt_state, state.params, loss=loss)` yourself.)

# %%
TRAIN_STEPS = HORIZON
x_train, y_train = jnp.asarray(x[:1400] / 16.0, jnp.float32), jnp.asarray(y[:1400])
model = ResidualMLP()


def fit(tx, seed=0):
    """Trains the model with `tx` in a TrainState loop; returns the training loss at every step."""
    params = model.init(jax.random.key(seed), x_train[:1])["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def train_step(state, rows):
        def loss_fn(params):
            logits = state.apply_fn({"params": params}, x_train[rows])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y_train[rows]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    losses = []
    for step in range(TRAIN_STEPS):
        rows = jax.random.choice(jax.random.key(1000 + step), x_train.shape[0], (64,), replace=False)
        state, loss = train_step(state, rows)
        losses.append(float(loss))
    return np.asarray(losses)


curves = {"fine-tuned": fit(lopt.load(path).transformation(num_steps=TRAIN_STEPS)),
          "shipped, not fine-tuned": fit(shipped.transformation(num_steps=TRAIN_STEPS))}
adam_runs = {lr: fit(optax.adam(lr)) for lr in (1e-2, 3e-2)}
best_lr = min(adam_runs, key=lambda lr: adam_runs[lr][-10:].mean())
curves[f"adam, lr {best_lr:g}"] = adam_runs[best_lr]
for name, losses in curves.items():
    print(f"{name:24s} mean loss of the last 10 steps {losses[-10:].mean():.4f}")

plt.figure(figsize=(6, 3.5))
for name, losses in curves.items():
    plt.semilogy(np.convolve(losses, np.ones(5) / 5, mode="valid"), label=name)
plt.xlabel("step")
plt.ylabel("training loss (mean of 5 steps)")
plt.legend()
plt.title("ResidualMLP on digits in a flax TrainState loop")

# %% [markdown]
# Sixty meta-steps are a demonstration, not a result: they moved the shipped optimizer toward
# this model, and whether it then beats a tuned Adam is a question for held-out tasks and tuned
# baselines (tutorial 5), over several seeds.
#
# ## From a config file
#
# To meta-train a flax family with `lopt-meta-train`, register a function that builds it;
# its arguments become the config's `task.kwargs` (see `docs/adding_a_task_family.md`):
#
# ```python
# @tasks.register("digits_resmlp")
# def digits_resmlp(width: int = 32, batch_size: int = 64):
#     x, y = load_digits(return_X_y=True)
#     return tasks.from_flax(ResidualMLP(width), (x / 16.0, y), batch_size=batch_size, name="digits_resmlp")
# ```
#
# Next: [7. Exporting, shipping and loading a trained optimizer](07_export_ship_load.md).
