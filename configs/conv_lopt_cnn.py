"""conv_lopt (a learned convolution over conv kernels' gradient maps, lopt/conv_lopt.py) meta-trained with PES on
small CNNs classifying 8x8 digits (scikit-learn's bundled data, no files needed).

It is configs/feature_lopt.py's benchmark, loaded from that file (CNNs with 8 and 16 channels, 3x3
kernels, average pooling, batch 32; 8 tasks per meta-step, truncations of 20 steps, inner runs of 200
steps), with 1500 meta-steps, so the two compare. The convolution is conv_lopt's default, one layer
of 8 channels with 3x3 kernels (`config.optimizer.kwargs.conv_channels`, `conv_kernel_size`); the other
settings are small_fc_lopt's too, so `--config.optimizer.name=small_fc_lopt` meta-trains the
per-parameter baseline on the same benchmark.
"""

from pathlib import Path

import ml_collections

from meta_train.config import load_config


def get_config():
    config = load_config(Path(__file__).with_name("feature_lopt.py"))
    kwargs = config.optimizer.kwargs
    config.optimizer.name = "conv_lopt"
    config.optimizer.kwargs = ml_collections.ConfigDict(
        {"hidden_sizes": kwargs.hidden_sizes, "step_mult": kwargs.step_mult, "exp_mult": kwargs.exp_mult})
    config.meta_train.num_steps = 1500
    config.meta_train.meta_lr_schedule.kwargs.decay_steps = config.meta_train.num_steps
    config.checkpoint.every = 50
    return config
