# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # 2. A learned optimizer is an optax transformation
#
# A learned optimizer is a small neural network that reads, for every parameter, its gradient,
# momenta, value and the training time, and outputs that parameter's update. In lopt it is two
# things:
#
# - a **`LearnedOptimizer`**: fixed hyperparameters (a frozen dataclass), `init(key)` giving
#   meta-parameters (a pytree of arrays: the network's weights);
# - its **`transformation(meta_params)`**: a plain `optax.GradientTransformationExtraArgs`
#   that any optax training loop can use.
#
# Meta-training (tutorial 3) changes the meta-parameters; using an optimizer only needs the
# transformation.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

import lopt

print("registered optimizers:", ", ".join(lopt.registered_names()))

# %% [markdown]
# ## Meta-parameters are a pytree
#
# `small_fc_lopt` is learned_optimization's small per-parameter MLP. Its constructor arguments
# are its `config`; `init` gives fresh (untrained) meta-parameters.

# %%
optimizer = lopt.get("small_fc_lopt")
meta_params = optimizer.init(jax.random.key(0))
print("config:", optimizer.config)
print("meta-parameter shapes:", jax.tree.map(jnp.shape, meta_params))
print("number of meta-parameters:", sum(x.size for x in jax.tree.leaves(meta_params)))

# %% [markdown]
# ## A plain optax training loop
#
# The model below is written in plain JAX, outside lopt's task families: a 64-32-10 MLP on
# scikit-learn's 8x8 digits. `train` takes any optax transformation. The only difference from
# a hand-designed optimizer is that `update` needs `params` (learned optimizers read them) and
# may take the loss as an extra argument (`loss=`), which some learned optimizers read.

# %%
NUM_STEPS = 200  # a real comparison: your model's full run and several seeds

digits = load_digits()
x_all = jnp.asarray(digits.data / 16.0, jnp.float32)
y_all = jnp.asarray(digits.target, jnp.int32)


def init_mlp(key):
    k1, k2 = jax.random.split(key)
    return {"w1": jax.random.normal(k1, (64, 32)) / 8.0, "b1": jnp.zeros(32),
            "w2": jax.random.normal(k2, (32, 10)) / jnp.sqrt(32.0), "b2": jnp.zeros(10)}


def loss_fn(params, x, y):
    hidden = jnp.tanh(x @ params["w1"] + params["b1"])
    logits = hidden @ params["w2"] + params["b2"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train_losses(tx, seed=0):
    """Trains the MLP with `tx` on batches of 128 digits; returns the training loss at every step."""
    params = init_mlp(jax.random.key(seed))

    def step(carry, key):
        params, opt_state = carry
        rows = jax.random.choice(key, x_all.shape[0], (128,), replace=False)
        loss, grads = jax.value_and_grad(loss_fn)(params, x_all[rows], y_all[rows])
        updates, opt_state = tx.update(grads, opt_state, params, loss=loss)
        return (optax.apply_updates(params, updates), opt_state), loss

    keys = jax.random.split(jax.random.key(seed + 1), NUM_STEPS)
    return jax.lax.scan(step, (params, tx.init(params)), keys)[1]


def train(tx):
    """Returns `train_losses(tx)` computed under jit, as a numpy array."""
    return np.asarray(jax.jit(lambda: train_losses(tx))())


# %% [markdown]
# Hand-designed optax optimizers have no `loss=` argument; `optax.with_extra_args_support`
# lets one loop serve both. Below: Adam, the untrained learned optimizer, and two optimizers
# meta-trained by this project and shipped with the package (`lopt.pretrained`):
# `small_fc_lopt_digits8` (meta-trained on digits MLPs; it sets its own step sizes) and
# `celo2_generalist` (a learned direction scaled by a learning rate and schedule, meta-trained on
# other 8x8 image MLPs; like Adam, it is used with a learning rate picked per problem). Adam and
# Celo2 each get the best of four learning rates, run side by side as one `vmap` (the learning
# rate may be a traced array; Celo2's `transformation` takes it as `learning_rate=`).

# %%
LEARNING_RATES = (3e-3, 1e-2, 3e-2, 1e-1)  # a real sweep: finer, judged on held-out data


def best_of(make_tx):
    """Returns (learning rate, loss curve) of the rate whose last 10 losses are lowest."""
    rates = jnp.asarray(LEARNING_RATES)
    curves = np.asarray(jax.jit(jax.vmap(lambda lr: train_losses(make_tx(lr))))(rates))
    best = int(np.argmin(curves[:, -10:].mean(axis=1)))
    return LEARNING_RATES[best], curves[best]


print("shipped optimizers:", lopt.pretrained.available())
adam_lr, adam_curve = best_of(lambda lr: optax.with_extra_args_support(optax.adam(lr)))
celo2 = lopt.pretrained.load("celo2_generalist")
celo2_lr, celo2_curve = best_of(
    lambda lr: celo2.optimizer.transformation(celo2.meta_params, num_steps=NUM_STEPS, learning_rate=lr))
curves = {
    f"adam, lr {adam_lr:g}": adam_curve,
    "small_fc_lopt, untrained": train(optimizer.transformation(meta_params, num_steps=NUM_STEPS)),
    "small_fc_lopt_digits8": train(lopt.pretrained.load("small_fc_lopt_digits8").transformation(num_steps=NUM_STEPS)),
    f"celo2_generalist, lr {celo2_lr:g}": celo2_curve,
}
for name, losses in curves.items():
    print(f"{name:30s} final loss {losses[-10:].mean():.4f}")

plt.figure(figsize=(6, 3.5))
for name, losses in curves.items():
    plt.semilogy(losses, label=name)
plt.xlabel("step")
plt.ylabel("training loss")
plt.legend()
plt.title("One optax loop, four transformations")

# %% [markdown]
# The untrained network outputs small, nearly random updates, so it barely trains. The
# meta-trained ones do better than Adam at its best rate of the four on this model; one model
# and one seed is an anecdote, not a benchmark.
# Tutorial 5 shows how to compare optimizers fairly, with every baseline's learning rate tuned.
#
# ## Composing with optax
#
# Since it is an ordinary transformation, a learned optimizer composes with the rest of optax:
# gradient clipping before it, weight decay or masking around it.

# %%
trained = lopt.pretrained.load("small_fc_lopt_digits8")
clipped = optax.chain(optax.clip_by_global_norm(1.0), trained.transformation(num_steps=NUM_STEPS))
print(f"clipped small_fc_lopt_digits8 final loss {train(clipped)[-10:].mean():.4f}")

# %% [markdown]
# ## The optimizer state
#
# The state is a pytree too (momenta, second moments, the step count), so it checkpoints with
# orbax or any pytree serialiser, like Adam's.

# %%
state = trained.transformation(num_steps=NUM_STEPS).init(init_mlp(jax.random.key(0)))
print(jax.tree.map(jnp.shape, state))

# %% [markdown]
# Next: [3. Meta-training with PES from Python](03_meta_training_with_pes.md).
