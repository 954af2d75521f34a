# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # 4. Estimators compared where truncation bias is visible
#
# The meta-objective of a learned optimizer is a property of whole inner runs (here: the mean
# loss over a run of T steps), but to update the meta-parameters more than once per run, an
# estimator works on *truncations* of K steps. This tutorial compares four of lopt's
# estimators, all behind one interface (`meta_train.Estimator`):
#
# - **`TruncatedBackprop`**: backpropagation through the K steps of the truncation, treating
#   the state it starts from as a constant;
# - **`TruncatedES`**: antithetic evolution strategies on the truncation alone;
# - **`PES`**: the same perturbations, but each task remembers the sum of the perturbations
#   applied so far in its current run, which accounts for how the meta-parameters shaped the
#   state a truncation starts from;
# - **`FullHorizonES`**: evolution strategies over whole runs started afresh, no truncation.
#
# The first two ignore how the meta-parameters shaped the starting state, so they optimise a
# greedy, short-horizon objective: they are *biased*. This tutorial builds a toy where the bias
# moves the optimum, and compares the estimators against the exact meta-gradient.

# %%
import dataclasses
import math

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import lopt
import meta_train
import tasks
from meta_train.parallel import set_cpu_loop_unrolling

set_cpu_loop_unrolling(False)  # before JAX starts; on CPU these small programs then compile about a fifth faster

# %% [markdown]
# ## A learned optimizer with one meta-parameter
#
# Writing a learned optimizer takes a frozen, keyword-only dataclass whose fields are its
# fixed hyperparameters (here only the initial learning rate), `init` returning the
# meta-parameters, and `transformation` returning an optax transformation for given
# meta-parameters. `@lopt.register` makes it available as `lopt.get(name)` and lets exports
# name it. This one is plain SGD whose log learning rate is the only meta-parameter, so every
# meta-gradient is a single number we can plot.

# %%
@lopt.register("tutorial_sgd_log_lr")
@dataclasses.dataclass(frozen=True, kw_only=True)
class SGDLogLearningRate(lopt.LearnedOptimizer):
    """SGD at learning rate exp(meta_params['log_lr'])."""

    learning_rate: float = 0.05

    def init(self, key):
        del key
        return {"log_lr": jnp.asarray(math.log(self.learning_rate), jnp.float32)}

    def transformation(self, meta_params, *, num_steps=None):
        del num_steps
        return optax.with_extra_args_support(optax.sgd(jnp.exp(meta_params["log_lr"])))


optimizer = lopt.get("tutorial_sgd_log_lr")
print(optimizer.config, optimizer.init(jax.random.key(0)))

# %% [markdown]
# ## A toy family: the noisy quadratic
#
# The loss is `0.5 * sum(h * x**2)` with curvatures `h` from 1 down to 1/100, and every direction
# starts with the same loss. Each "batch" is a draw of gradient noise whose variance in a
# direction is proportional to its curvature, as minibatch noise roughly is. The learning rate
# trades two effects with different time scales:
#
# - a larger rate makes progress along the flat directions, which pays off over the whole run;
# - it also raises the noise floor along the steep directions, which costs loss at once.
#
# A truncation of 10 steps sees the second effect in full but only a sliver of the first.

# %%
class NoisyQuadraticTask(tasks.Task):
    """0.5 * sum(h * x^2) from x0 = start / sqrt(h); a batch is noise adding noise_scale * sqrt(h) * z to the gradient."""

    name = "noisy_quadratic"

    def __init__(self, curvatures, start, noise_scale):
        self.curvatures, self.start, self.noise_scale = curvatures, start, noise_scale

    def init(self, key):
        del key
        return {"x": self.start / jnp.sqrt(self.curvatures)}

    def sample_batch(self, key, split):
        return jax.random.normal(key, self.start.shape)

    def loss(self, params, key, batch):
        x = params["x"]
        return 0.5 * jnp.sum(self.curvatures * x**2) + self.noise_scale * jnp.sum(jnp.sqrt(self.curvatures) * batch * x)

    def normalizer(self, loss):
        return loss / (0.5 * self.start.shape[0])  # the expected initial loss is 0.5 per direction


class NoisyQuadraticFamily(tasks.TaskFamily):
    """Noisy quadratics whose tasks differ in their random starting point."""

    name = "noisy_quadratic"
    data_fields = ()  # no data: the curvatures follow from the static settings

    def __init__(self, dim=10, condition=100.0, noise_scale=1.0):
        self.dim, self.condition, self.noise_scale = dim, condition, noise_scale

    def sample(self, key):
        return {"start": jax.random.normal(key, (self.dim,))}

    def task(self, cfg):
        curvatures = jnp.logspace(0.0, -math.log10(self.condition), self.dim)
        return NoisyQuadraticTask(curvatures, cfg["start"], self.noise_scale)


family = NoisyQuadraticFamily()
report = tasks.validate(family, num_tasks=2, steps=20)
print("validated; best Adam learning rate per task:", report.best_learning_rate)

# %% [markdown]
# ## Driving an estimator by hand
#
# Every estimator has two pure functions: `init(unroll, theta, key)` starts the tasks' inner
# runs, and `estimate(unroll, theta, state, key)` advances them by one truncation and returns
# `(meta-gradient, new state, metrics)`. A `TruncatedUnroll` holds the family, the optimizer and
# the horizon (how long each inner run lasts). `meta_train.Trainer` wraps this loop with
# skipping of non-finite meta-gradients, masks and multi-device support; written out, a
# meta-training loop is a `lax.scan` over meta-steps:

# %%
HORIZON, TRUNCATION = 100, 10  # a real study: the horizon you meta-train for (e.g. 1,000) and its truncation
NUM_TASKS, META_STEPS = 32, 300  # tasks per truncated estimate, and meta-steps; more of both: smoother curves
LOG_LRS = np.linspace(-3.0, 0.5, 15)
START_LOG_LR, META_LR = math.log(0.05), 0.03


def meta_train_log_lr(estimator, horizon, start_log_lrs, meta_lrs):
    """Runs META_STEPS meta-steps of Adam from each (start log lr, meta-lr) pair.

    Returns the log lr, the estimated gradient and the meta-loss at every meta-step, each [pairs, META_STEPS].
    A meta-lr of 0 keeps theta fixed: its gradients are samples of the estimator at that theta.
    """
    unroll = meta_train.TruncatedUnroll(family, optimizer, horizon)

    def run(log_lr, meta_lr, key):
        theta = {"log_lr": log_lr}
        meta_optimizer = optax.adam(meta_lr)
        init_key, steps_key = jax.random.split(key)

        def meta_step(carry, step_key):
            theta, meta_opt_state, state = carry
            gradient, state, metrics = estimator.estimate(unroll, theta, state, step_key)
            updates, meta_opt_state = meta_optimizer.update(gradient, meta_opt_state)
            return ((optax.apply_updates(theta, updates), meta_opt_state, state),
                    (theta["log_lr"], gradient["log_lr"], metrics["meta_loss"]))

        carry = (theta, meta_optimizer.init(theta), estimator.init(unroll, theta, init_key))
        return jax.lax.scan(meta_step, carry, jax.random.split(steps_key, META_STEPS))[1]

    # One key for every pair: all of them see the same tasks and noise, so curves over the grid are smooth.
    outputs = jax.jit(jax.vmap(run, in_axes=(0, 0, None)))(
        jnp.asarray(start_log_lrs, jnp.float32), jnp.asarray(meta_lrs, jnp.float32), jax.random.key(0))
    return [np.asarray(x) for x in outputs]


# %% [markdown]
# Each estimator runs once, vmapped over 16 pairs: the 15 log learning rates of the grid held
# fixed (meta-lr 0), to average its estimates there, and one meta-training run starting at a
# learning rate of 0.05. One compilation per estimator serves both.
#
# The reference is the exact meta-gradient. When a truncation covers the whole run, truncated
# backprop is the exact gradient of the meta-objective: with `trunc_length=HORIZON` and a
# horizon that does not stagger the tasks' first runs, every call trains fresh tasks from step 0
# to the end and backpropagates through all of it. `FullHorizonES` takes whole runs too. The
# two get fewer tasks per call, since each of their calls is ten truncations long.

# %%
whole_runs = meta_train.ConstantHorizon(HORIZON, stagger=False)
truncated_runs = meta_train.ConstantHorizon(HORIZON)  # first runs shortened at random, so tasks restart at different times
EXACT = "exact (whole-run backprop)"
estimators = {
    EXACT: (meta_train.TruncatedBackprop(num_tasks=NUM_TASKS // 4, trunc_length=HORIZON), whole_runs),
    "TruncatedBackprop": (meta_train.TruncatedBackprop(num_tasks=NUM_TASKS, trunc_length=TRUNCATION), truncated_runs),
    "TruncatedES": (meta_train.TruncatedES(num_tasks=NUM_TASKS, trunc_length=TRUNCATION, std=0.05), truncated_runs),
    "PES": (meta_train.PES(num_tasks=NUM_TASKS, trunc_length=TRUNCATION, std=0.05), truncated_runs),
    "FullHorizonES": (meta_train.FullHorizonES(num_tasks=NUM_TASKS // 4, horizon_length=HORIZON, std=0.05), whole_runs),
}
starts = np.append(LOG_LRS, START_LOG_LR)
meta_lrs = np.append(np.zeros_like(LOG_LRS), META_LR)
average, trajectory = {}, {}
for name, (estimator, horizon) in estimators.items():
    log_lrs, gradients, losses = meta_train_log_lr(estimator, horizon, starts, meta_lrs)
    # Truncated estimators start with shortened (staggered) runs; leave the first run's worth out of the averages.
    skip = 0 if horizon is whole_runs else HORIZON // TRUNCATION
    average[name] = gradients[:-1, skip:].mean(axis=1)
    trajectory[name] = log_lrs[-1]
    if name == EXACT:
        mean_loss = losses[:-1].mean(axis=1)  # the meta-objective at each grid point
    inner_steps = estimator.num_tasks * estimator.num_particles * estimator.trunc_length
    print(f"{name:27s} {inner_steps:5d} inner steps per meta-step")


# %% [markdown]
# ## Where each estimator points
#
# Meta-training follows an estimator's average, so it settles where the average crosses zero.

# %%
def zero_crossing(gradient):
    """The log learning rate where an average gradient turns from negative to positive (linear interpolation)."""
    i = int(np.argmax(gradient > 0))
    return LOG_LRS[i - 1] - gradient[i - 1] * (LOG_LRS[i] - LOG_LRS[i - 1]) / (gradient[i] - gradient[i - 1])


best = int(np.argmin(mean_loss))
print(f"lowest meta-objective on the grid: {mean_loss[best]:.3f} at log lr {LOG_LRS[best]:.2f}\n")
print(f"{'estimator':27s} {'average at lr 0.05':>18s} {'zero at log lr':>14s} {'meta-objective there':>20s}")
for name, gradient in average.items():
    zero = zero_crossing(gradient)
    print(f"{name:27s} {gradient[0]:18.3f} {zero:14.2f} {np.interp(zero, LOG_LRS, mean_loss):20.3f}")

figure, (top, bottom) = plt.subplots(2, 1, figsize=(6, 6), sharex=True)
top.plot(LOG_LRS, mean_loss, "k")
top.set_ylabel("meta-objective\n(mean normalised loss)")
top.set_title(f"SGD on noisy quadratics: {HORIZON}-step runs, {TRUNCATION}-step truncations")
bottom.axhline(0.0, color="gray", lw=0.8)
for name, gradient in average.items():
    style = dict(color="k", lw=2.5) if name == EXACT else dict(marker="o", ms=3)
    bottom.plot(LOG_LRS, gradient, label=name, **style)
bottom.set_ylim(-0.25, 0.4)
bottom.set_xlabel("log learning rate")
bottom.set_ylabel("average meta-gradient")
bottom.legend(fontsize=8)

# %% [markdown]
# The exact gradient (black), PES and FullHorizonES agree over the whole grid and cross zero
# at log lr -0.5 (a learning rate of 0.6), the bottom of the meta-objective. Truncated backprop
# and truncated ES agree with each other, since both estimate the gradient of the same
# truncated objective, but not with the exact gradient: at a learning rate of 0.05 they see
# about 13% of it (-0.02 against -0.17), and they cross zero at a learning rate of about 0.3,
# where the meta-objective is 0.32 instead of 0.27.
#
# This is the short-horizon bias (Wu et al., 2018, "Understanding short-horizon bias in
# stochastic meta-optimization"). A truncation takes its starting state as given, so it credits
# a larger learning rate only with the progress made along the flat directions during its own
# 10 steps, not with the progress it carried over from earlier truncations; the higher noise
# floor along the steep directions appears within a few steps, and it sees that in full. So the
# truncated estimators settle on a learning rate that is too small. How large such a bias is
# depends on the problem: here the flat and the steep directions work on very different time
# scales. PES removes it (Vicol et al., 2021) by weighting each truncation's loss difference by
# all the perturbations applied in the run so far.
#
# ## Meta-training the learning rate with each estimator
#
# The last of the 16 runs of each estimator meta-trained the log learning rate with
# Adam from 0.05.

# %%
for name, path in trajectory.items():
    last = path[-100:]
    print(f"{name:27s} last 100 meta-steps: log lr {last.mean():5.2f} +- {last.std():.2f}")

plt.figure(figsize=(6, 3.5))
for name, path in trajectory.items():
    plt.plot(path, label=name, **(dict(color="k", lw=2.5) if name == EXACT else {}))
plt.axhline(zero_crossing(average[EXACT]), color="gray", ls="--", lw=0.8)
plt.xlabel("meta-step")
plt.ylabel("log learning rate")
plt.legend(fontsize=8)
plt.title(f"Meta-training from lr {math.exp(START_LOG_LR):g} with Adam({META_LR})")

# %% [markdown]
# Meta-training lands where the averages said it would: truncated backprop and truncated ES
# near a learning rate of 0.3, PES, FullHorizonES and the exact gradient at 0.6. PES pays for
# being unbiased with variance: its path wanders the most (+-0.08 over the last 100
# meta-steps), because the perturbation sum that removes the bias grows with every truncation
# of a run. FullHorizonES is unbiased without that growth, but it spends 1,600 inner steps per
# meta-step and updates the meta-parameters once per whole run; with runs thousands of steps
# long, that is what truncations avoid.
#
# In a config file the estimator is one group, `meta_train.estimator`: a registered `name`
# (`pes`, `tbptt`, `truncated_es`, `full_horizon_es`, ...) and its `kwargs`, so comparing them
# on your own family changes that group only.
#
# Next: [5. Evaluating against tuned baselines and reading the plots](05_evaluating_against_tuned_baselines.md).
