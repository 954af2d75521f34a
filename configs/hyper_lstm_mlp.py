"""Meta-train the VeLO-style per-tensor LSTM hypernetwork over a bank of 8 per-parameter MLPs with
PES on MLPs on scikit-learn's bundled 8x8 digits (no data files).
"""

from meta_train.config import digits_mlp_experiment


def get_config():
    config = digits_mlp_experiment("hyper_lstm", lstm_size=32, num_bank=8, mlp_hidden_size=8, step_mult=0.01)
    return config
