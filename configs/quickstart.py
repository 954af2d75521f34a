"""Quickstart: meta-train small_fc_lopt with PES on 8x8 digits MLPs (scikit-learn's bundled data), then evaluate.

Runs in a few minutes on 2 CPU cores and needs no data files.
"""

from meta_train.config import digits_mlp_experiment


def get_config():
    # step_mult 1e-2 as in the released muLO weights; with 1e-3 meta-training was far slower here
    config = digits_mlp_experiment("mlp", hidden_sizes=(32, 32), step_mult=1e-2, exp_mult=1e-3)
    return config
