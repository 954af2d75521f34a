"""Meta-train the L2L coordinatewise 2-layer LSTM (20 units) with PES on rotated ill-conditioned
10-d quadratics (condition 1..1e4).
"""

from meta_train.config import quadratic_experiment


def get_config():
    config = quadratic_experiment("l2l_lstm", hidden_size=20, num_layers=2, output_scale=0.1)
    return config
