"""Meta-train the VeLO-style per-tensor LSTM hypernetwork over a bank of 8 per-parameter MLPs with
PES on rotated ill-conditioned 10-d quadratics (condition 1..1e4).
"""

from meta_train.config import quadratic_experiment


def get_config():
    config = quadratic_experiment("hyper_lstm", lstm_size=32, num_bank=8, mlp_hidden_size=8, step_mult=0.01)
    return config
