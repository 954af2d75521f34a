"""Meta-train the Adafactor-feature MLP (39 inputs, learned accumulator decays) with PES on MLPs on
scikit-learn's bundled 8x8 digits (no data files).
"""

from meta_train.config import digits_mlp_experiment


def get_config():
    config = digits_mlp_experiment("adafac_mlp", hidden_sizes=(32, 32), step_mult=0.01)
    return config
