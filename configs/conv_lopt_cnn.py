"""conv_lopt (a learned convolution over conv kernels' gradient maps, lopt/conv_lopt.py) meta-trained with PES on
small CNNs classifying 8x8 digits (scikit-learn's bundled data, no files needed).

The same benchmark as configs/feature_lopt.py (CNNs with 8 and 16 channels, 3x3 kernels, average
pooling, batch 32; 8 tasks per meta-step, truncations of 20 steps, inner runs of 200 steps), so the
two compare. The convolution is conv_lopt's default, one layer of 8 channels with 3x3 kernels
(`config.optimizer.kwargs.conv_channels`, `conv_kernel_size`); the other settings are small_fc_lopt's
too, so `--config.optimizer.name=small_fc_lopt` meta-trains the per-parameter baseline on the same
benchmark.
"""

from meta_train.config import base_config


def get_config():
    config = base_config()
    config.task.family = "cnn_image"
    config.task.kwargs.dataset = "digits"
    config.task.kwargs.image_size = 8
    config.task.kwargs.channels = (8, 16)
    config.task.kwargs.kernel_size = 3
    config.task.kwargs.pooling = "avg"
    config.task.kwargs.batch_size = 32
    config.optimizer.name = "conv_lopt"
    config.optimizer.kwargs.hidden_sizes = (32, 32)
    config.optimizer.kwargs.step_mult = 1e-2
    config.optimizer.kwargs.exp_mult = 1e-3
    config.meta_train.num_tasks = 8
    config.meta_train.estimator.kwargs.trunc_length = 20
    config.meta_train.estimator.kwargs.std = 0.01
    config.meta_train.horizon.kwargs.length = 200
    config.meta_train.meta_learning_rate = 3e-3
    config.meta_train.meta_lr_schedule.name = "cosine"
    config.meta_train.num_steps = 1500
    config.meta_train.meta_lr_schedule.kwargs.decay_steps = config.meta_train.num_steps
    config.meta_train.parallel = "shard_map"
    config.meta_train.host_devices = -1
    config.meta_train.task_map = "map"
    config.xla_cpu_loop_unrolling = False
    config.checkpoint.every = 50
    config.eval.num_tasks, config.eval.num_steps = 8, 200
    return config
