"""Quickstart: meta-train small_fc_lopt with PES on 8x8 digits MLPs (scikit-learn's bundled data), then evaluate.

Runs in a few minutes on 2 CPU cores and needs no data files.
"""

from meta_train.config import base_config


def get_config():
    config = base_config()
    config.task.family = "mlp_image"
    config.task.kwargs.dataset = "digits"
    config.task.kwargs.hidden = (32, 32)
    config.task.kwargs.image_size = 8
    config.task.kwargs.batch_size = 128
    config.optimizer.name = "mlp"
    config.optimizer.kwargs.hidden_sizes = (32, 32)
    config.optimizer.kwargs.step_mult = 1e-2  # as in the released muLO weights; 1e-3 learns far slower here
    config.optimizer.kwargs.exp_mult = 1e-3
    config.meta_train.num_tasks = 8
    config.meta_train.trunc_length = 20
    config.meta_train.std = 0.01
    config.meta_train.horizon = "constant"
    config.meta_train.horizon_length = 200
    config.meta_train.meta_learning_rate = 3e-3
    config.meta_train.num_steps = 1500
    config.checkpoint.every = 250
    config.eval.num_tasks = 16
    config.eval.num_steps = 200
    return config
