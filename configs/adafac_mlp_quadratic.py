"""Meta-train the Adafactor-feature MLP (39 inputs, learned accumulator decays) with PES on rotated
ill-conditioned 10-d quadratics (condition 1..1e4).
"""

from meta_train.config import quadratic_experiment


def get_config():
    config = quadratic_experiment("adafac_mlp", hidden_sizes=(32, 32), step_mult=0.01)
    return config
