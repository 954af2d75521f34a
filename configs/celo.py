"""Meta-train Celo: per-parameter MLP times an LSTM learning-rate scheduler, trained in two phases
with PES on MLPs on scikit-learn's bundled 8x8 digits (no data files).
"""

from meta_train.config import digits_mlp_experiment


def get_config():
    config = digits_mlp_experiment("celo", hidden_sizes=(32, 32), scheduler_size=16, step_mult=0.01)
    config.meta_train.phases = ("mlp:1000", "scheduler:500")  # MLP first, then the scheduler with the MLP frozen
    return config
