"""Li & Malik (2016) as policy search: meta-train li_malik_policy with the policy_gradient estimator (REINFORCE,
leave-one-out baseline) on Geman-McClure robust linear regression, 20 trajectories of 40 steps per objective.

Switch the estimator to PES on the same architecture with
`--config.meta_train.estimator.name=pes --config.meta_train.num_tasks=40
--config.meta_train.estimator.kwargs.trunc_length=40` (equal inner steps per meta-step: 4 tasks x 20
trajectories = 40 tasks x 2 antithetic particles, 40 steps each).
scripts/reproduce_li_malik.py runs the full comparison against tuned baselines.
"""

import ml_collections

from meta_train.config import base_config


def get_config():
    config = base_config()
    config.task.family = "robust_linear_regression"
    config.task.kwargs = ml_collections.ConfigDict({"dim": 3, "num_examples": 25})
    config.optimizer.name = "li_malik_policy"
    config.optimizer.kwargs = ml_collections.ConfigDict({"history_length": 25, "hidden_size": 50})
    mt = config.meta_train
    mt.num_tasks = 4
    mt.estimator.name = "policy_gradient"
    mt.estimator.kwargs = ml_collections.ConfigDict({
        "trunc_length": 40, "num_particles": 20, "std": 0.01, "learn_std": True, "std_learning_rate": 0.01,
        "gamma": 1.0, "baseline": "leave_one_out", "normalize_advantages": True,
    })
    # whole inner runs per truncation and no staggering: the REINFORCE estimate is then unbiased
    mt.horizon.kwargs = ml_collections.ConfigDict({"length": 40, "stagger": False})
    mt.meta_learning_rate = 1e-2
    mt.num_steps = 1500
    mt.meta_lr_schedule.name = "cosine"
    mt.meta_lr_schedule.kwargs = ml_collections.ConfigDict({"decay_steps": mt.num_steps})
    config.checkpoint.every = 250
    config.eval.num_tasks, config.eval.num_steps = 16, 100
    return config
