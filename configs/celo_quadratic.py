"""Meta-train Celo: per-parameter MLP times an LSTM learning-rate scheduler, trained in two phases
with PES on rotated ill-conditioned 10-d quadratics (condition 1..1e4).
"""

from meta_train.config import quadratic_experiment


def get_config():
    config = quadratic_experiment("celo", hidden_sizes=(32, 32), scheduler_size=16, step_mult=0.01)
    config.meta_train.phases = ("mlp:1333", "scheduler:667")  # MLP first, then the scheduler with the MLP frozen
    return config
