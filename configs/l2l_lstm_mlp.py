"""Meta-train the L2L coordinatewise 2-layer LSTM (20 units) with PES on MLPs on scikit-learn's
bundled 8x8 digits (no data files).
"""

from meta_train.config import digits_mlp_experiment


def get_config():
    config = digits_mlp_experiment("l2l_lstm", hidden_size=20, num_layers=2, output_scale=0.1)
    return config
