# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # 1. Tasks and task families
#
# A learned optimizer is meta-trained on many training problems, so lopt's unit of data is a
# **task family**: a distribution over training problems whose shapes are fixed. Sampling
# draws a *task configuration*, a small pytree of arrays (an init scale, an activation index, a
# condition number); `family.task(cfg)` turns it into a **task** with `init`, `loss` and
# `sample_batch`. Because configurations are arrays and shapes are fixed, a batch of tasks is
# one `jax.vmap`, which is what makes meta-training fast.
#
# Settings here are small so the tutorial runs in seconds on a laptop CPU.

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax

import tasks

print(sorted(tasks.registered_names()))

# %% [markdown]
# ## One family, many tasks
#
# `mlp_image` trains MLPs on small images. `dataset="digits"` is scikit-learn's bundled 8x8
# digits, so nothing is downloaded. Each sampled task has its own activation and init scale.

# %%
family = tasks.get("mlp_image", dataset="digits", hidden=(32, 32), batch_size=64)
cfg = family.sample(jax.random.key(0))
print("task configuration:", jax.tree.map(lambda x: (x.shape, x.dtype.name), cfg))

task = family.task(cfg)
params = task.init(jax.random.key(1))
print("parameter shapes:", jax.tree.map(jnp.shape, params))
x, y = task.sample_batch(jax.random.key(2), "train")
print("batch:", x.shape, y.shape, "loss at init:", float(task.loss(params, jax.random.key(3), (x, y))))

# %% [markdown]
# A task's `normalizer` maps its loss to a scale shared by the whole family (here the loss
# divided by log(10): uniform predictions score 1, and a large sampled init scale starts above
# that). Meta-training averages normalised losses, so no
# task dominates the meta-objective just by having larger losses.

# %%
print("normalised loss at init:", float(task.normalizer(task.loss(params, jax.random.key(3), (x, y)))))

# %% [markdown]
# ## Training a batch of tasks with one vmap
#
# Below, Adam trains eight sampled tasks at once. `train` is written for one task; `jax.vmap`
# runs it over the leading axis of the configurations and keys.

# %%
NUM_TASKS, NUM_STEPS = 8, 150  # a real study: more tasks and the horizon you care about (e.g. 1000 steps)


def train(cfg, key, learning_rate=3e-2):
    """Trains one task with Adam; returns its normalised training loss after every step."""
    task = family.task(cfg)
    init_key, steps_key = jax.random.split(key)
    params = task.init(init_key)
    adam = optax.adam(learning_rate)

    def step(carry, step_key):
        params, opt_state = carry
        batch_key, loss_key = jax.random.split(step_key)
        loss, grads = jax.value_and_grad(task.loss)(params, loss_key, task.sample_batch(batch_key, "train"))
        updates, opt_state = adam.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), task.normalizer(loss)

    _, losses = jax.lax.scan(step, (params, adam.init(params)), jax.random.split(steps_key, NUM_STEPS))
    return losses


keys = jax.random.split(jax.random.key(0), NUM_TASKS)
cfgs = jax.vmap(family.sample)(keys)
losses = jax.jit(jax.vmap(train))(cfgs, keys)
print("losses:", losses.shape)
print("final normalised loss per task:", " ".join(f"{v:.3f}" for v in losses[:, -1]))

plt.figure(figsize=(6, 3.5))
plt.semilogy(losses.T, alpha=0.8)
plt.xlabel("inner step")
plt.ylabel("normalised training loss")
plt.title("Adam on 8 sampled digits-MLP tasks")

# %% [markdown]
# The spread between curves is the point: tasks differ (activation, init scale), and a learned
# optimizer meta-trained on the family has to do well on all of them.
#
# ## Checking a family before meta-training on it
#
# `tasks.validate` builds a few tasks, checks that the family is a valid pytree, that shapes
# are fixed, that losses and gradients are finite, that the normaliser puts the initial loss on
# a sensible scale, and that Adam decreases the loss. A failing check is a one-line
# `TaskError` naming the check.

# %%
report = tasks.validate(family, num_tasks=2, steps=20)
print("best Adam learning rate per task:", report.best_learning_rate)
print("normalised initial loss:", report.normalized_initial_loss.round(3))

# %% [markdown]
# Other families share the same interface: `quadratic` (ill-conditioned bowls),
# `logistic_regression`, `cnn_image`, `transformer_lm`, `few_shot` and `finance`;
# `docs/task_families.md` lists their arguments. A quadratic task has no data at all:

# %%
quadratics = tasks.get("quadratic", dim=10)
quadratic = quadratics.task(quadratics.sample(jax.random.key(0)))
start = quadratic.init(jax.random.key(1))
print("quadratic loss at init:", float(quadratic.loss(start, jax.random.key(2), None)))

# %% [markdown]
# Next: [2. A learned optimizer is an optax transformation](02_learned_optimizer_is_optax.md).
# To bring your own model instead of a built-in family, see
# [6. Bringing your own flax model](06_bring_your_own_flax_model.md).
