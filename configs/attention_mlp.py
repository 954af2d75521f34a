"""Meta-train the per-parameter attention block over the last 8 gradient tokens with PES on MLPs on
scikit-learn's bundled 8x8 digits (no data files).
"""

from meta_train.config import digits_mlp_experiment


def get_config():
    config = digits_mlp_experiment("attention", window=8, model_size=16, hidden_size=32, step_mult=0.01)
    return config
