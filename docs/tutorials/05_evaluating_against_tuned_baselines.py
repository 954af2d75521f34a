# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# # 5. Evaluating against tuned baselines and reading the plots
#
# A learned optimizer is worth using only if it beats well-tuned hand-designed optimizers, and
# a hand-designed optimizer is only as good as its learning rate. So lopt judges optimizers
# against **baselines whose learning rate is tuned per task**: every baseline trains every
# held-out task at every rate of a grid, and each task keeps the rate with the lowest final
# training loss. All optimizers train the same tasks, from the same initialisations, on the
# same batches.
#
# The `lopt-evaluate` command does this from the shell; the package `meta_train.evaluation`
# does it from Python, which is what this tutorial uses.

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from meta_train.evaluation import run as evaluation_run
from meta_train.evaluation import speedup
from meta_train.parallel import set_cpu_loop_unrolling

set_cpu_loop_unrolling(False)  # before JAX starts; on CPU these small programs then compile about a fifth faster

# %% [markdown]
# ## Describing an evaluation
#
# An evaluation is a `Spec`: the optimizers to judge (export files, or `pretrained:NAME` for
# one shipped with lopt), the settings (a task family and a step budget), the baselines and
# their learning-rate grid, and how many held-out tasks and seeds. Held-out tasks are drawn
# from a random stream that meta-training never uses (`task_seed`).
#
# Here the optimizer is `small_fc_lopt_digits8`, meta-trained on the very family we evaluate
# on (digits MLPs with two hidden layers of 32, 200-step runs); its held-out tasks are new
# draws of activation and init scale, not a new dataset. That is the most favourable test a
# learned optimizer can get. The baselines are Adam and SGD with momentum.

# %%
NUM_TASKS, NUM_STEPS = 8, 200  # a real evaluation: more tasks, 3+ seeds, and the budgets you care about
LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # the default grid is 9 rates, 1e-4..1

spec = evaluation_run.Spec(
    optimizers=("pretrained:small_fc_lopt_digits8",),
    settings=(evaluation_run.named_setting("digits_mlp", NUM_STEPS),),
    baselines=("adam", "sgd_momentum"),
    learning_rates=LEARNING_RATES,
    seeds=(0,),
    num_tasks=NUM_TASKS,
    valid_every=0,  # > 0 also records validation curves, at some extra compile time
)
summary = evaluation_run.run_evaluation(spec, "eval", show_progress=False, tensorboard="off")
print(summary["table"])

# %% [markdown]
# The same evaluation from the shell (each finished run is saved under `eval/units/`, so an
# interrupted command resumes):
#
# ```bash
# lopt-evaluate --optimizers pretrained:small_fc_lopt_digits8 --task digits_mlp \
#   --baselines adam sgd_momentum --learning-rates 0.001 0.003 0.01 0.03 0.1 \
#   --num-steps 200 --num-tasks 8 --valid-every 0 --out eval
# ```
#
# ## Reading the table
#
# - **learning rate**: the median of the per-task tuned rates, their range, and how many tasks
#   picked a rate at either end of the grid. A rate at the edge means the best rate may lie
#   outside the grid, so that baseline may be better than its row says.
# - **final train loss, mean / median**: over tasks (and seeds). When the mean is far above the
#   median, a few tasks dominate the mean.
# - **final valid loss**: the same, on the validation split of the data.
# - **speedup**, **worst**, **reached**: how much sooner the optimizer's training loss settles at
#   tuned Adam's final loss; below.
#
# The per-task numbers behind the rows are in `eval/evaluation.json`, with every curve
# (`[seeds, tasks, steps]`) at the tuned rates:

# %%
result = json.loads(Path("eval/evaluation.json").read_text())
setting = result["settings"]["digits_mlp"]
for name, entry in setting["optimizers"].items():
    train = np.asarray(entry["curves"]["final_losses"], float)[0]  # seed 0: one value per task
    valid = np.asarray(entry["curves"]["final_valid_losses"], float)[0]
    print(name)
    print(f"  final train loss: {' '.join(f'{x:7.1e}' for x in train)}")
    print(f"  final valid loss: {' '.join(f'{x:7.2f}' for x in valid)}")
    if "learning_rates" in entry:
        print(f"  tuned lr:         {' '.join(f'{x:7g}' for x in entry['learning_rates'])}")

# %% [markdown]
# Here SGD with momentum picked the largest rate of the grid, 0.1, on all 8 tasks: the grid may
# have cut it short, so its row says little until the grid is extended upwards (the default
# grid goes to 1.0). Adam's rates are inside the grid. small_fc_lopt_digits8's mean final loss
# is about 20 times its median because of one task that ends near 4e-3 while the others end
# near 2e-5.
#
# The speedup is defined once, in `meta_train/evaluation/speedup.py`, and every report uses it:

# %%
print(speedup.SPEEDUP_DEFINITION)

# %% [markdown]
# The reference is tuned Adam. "Stays" rather than "first touches" makes the speedup robust to
# noise: a noisy curve dips below a target long before it settles there. Tuned Adam's own row is
# the calibration (1.00x). "worst" is the smallest speedup over tasks and seeds and "reached"
# counts the runs that got there; a run that never settles at the target counts as 0.
#
# ## The curves
#
# `eval/curves.png` is the command's own plot: the mean over tasks and seeds with a min-max
# band. Drawn from `evaluation.json` below: the mean over tasks, and each task as a thin line.

# %%
curves = {name: np.asarray(entry["curves"]["train_losses"], float)[0]  # seed 0: [tasks, steps]
          for name, entry in setting["optimizers"].items()}

plt.figure(figsize=(6, 3.5))
for (name, losses), color in zip(curves.items(), ["C0", "C1", "C2"]):
    plt.semilogy(np.arange(1, NUM_STEPS + 1), losses.T, color=color, lw=0.4, alpha=0.4)
    plt.semilogy(np.arange(1, NUM_STEPS + 1), losses.mean(axis=0), color=color, lw=2, label=name)
plt.xlabel("inner step")
plt.ylabel("training loss (batch)")
plt.legend()
plt.title(f"{NUM_TASKS} held-out digits-MLP tasks")

# %% [markdown]
# Two things to read here. Batch losses are noisy, and on a log scale the more so the closer
# they get to zero, so compare running means (as the speedup does), not single steps. And a
# mean over tasks follows the worst of them: small_fc_lopt_digits8's thick line ends above most
# of its thin lines because of the one task that ends near 4e-3.
#
# ## The speedup, on one task
#
# Below, the first task: the 10-step running mean of each training curve, and tuned Adam's
# final loss (the mean of its last 10 losses). The speedup is the budget divided by the step
# from which a running mean stays at or below that line.

# %%
window = speedup.SPEEDUP_WINDOW
reference = curves["adam (tuned lr)"][0]
target = np.convolve(reference, np.ones(window) / window, mode="valid")[-1]  # as speedup.speedups computes it
plt.figure(figsize=(6, 3.5))
for name, losses in curves.items():
    running = np.convolve(losses[0], np.ones(window) / window, mode="valid")
    reached = speedup.first_step_staying(losses[0], target, window)
    value = float(speedup.speedups(losses[0], reference))
    print(f"{name:24s} " + (f"stays at or below from step {reached}: {value:.2f}x" if reached > 0
                            else f"ends above the target: {value:.2f}x"))
    line, = plt.semilogy(np.arange(window, NUM_STEPS + 1), running, label=f"{name}: {value:.2f}x")
    if reached > 0:
        plt.axvline(reached, color=line.get_color(), ls=":", lw=1)
plt.axhline(target, color="k", ls="--", lw=0.8, label="tuned Adam's final loss")
plt.xlabel("inner step")
plt.ylabel(f"{window}-step running mean of training loss")
plt.legend(fontsize=8)
plt.title("Speedup on task 0")

# %% [markdown]
# ## Training loss is not the whole story
#
# Each point below is one task: its final training loss against its final validation loss
# (both averaged over 8 batches after the last step, as in the table).

# %%
plt.figure(figsize=(5, 4))
for name, entry in setting["optimizers"].items():
    train = np.asarray(entry["curves"]["final_losses"], float).ravel()
    valid = np.asarray(entry["curves"]["final_valid_losses"], float).ravel()
    plt.loglog(train, valid, "o", label=name)
plt.xlabel("final training loss")
plt.ylabel("final validation loss")
plt.legend(fontsize=8)
plt.title("Per task: fit against generalisation")

# %% [markdown]
# On seven of the eight tasks small_fc_lopt_digits8 ends with a training loss 16 to 370 times
# lower than tuned Adam's (on the eighth, about the same), and on all eight with a validation
# loss about two to five times higher. It was meta-trained to make the *training* loss small
# within 200 steps, and it does that; nothing in its meta-objective rewarded generalisation. A speedup in training loss is therefore a statement about optimisation only.
# When held-out performance is the goal, meta-train on it (`meta_train.meta_loss = "valid"`
# makes the meta-loss the validation loss after every inner step) and tune the baselines on it
# too (`Spec(tune_on="valid")`, `--tune-on valid`).
#
# Before trusting a comparison, check that the tuned rates are inside the grid, look at the
# worst task and the "reached" count as well as the median, and compare validation as well as
# training loss. One seed and 8 tasks, as here, is a quick look; `seeds=(0, 1, 2)` reruns every
# task from new initialisations and batches, which shows how much of a difference is noise.
#
# Next: [6. Bringing your own flax model](06_bring_your_own_flax_model.md).
