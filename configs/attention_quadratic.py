"""Meta-train the per-parameter attention block over the last 8 gradient tokens with PES on rotated
ill-conditioned 10-d quadratics (condition 1..1e4).
"""

from meta_train.config import quadratic_experiment


def get_config():
    config = quadratic_experiment("attention", window=8, model_size=16, hidden_size=32, step_mult=0.01)
    return config
