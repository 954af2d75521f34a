"""Meta-train Adam with per-tensor lr/beta multipliers predicted from tensor statistics and time
with PES on MLPs on scikit-learn's bundled 8x8 digits (no data files).
"""

from meta_train.config import digits_mlp_experiment


def get_config():
    config = digits_mlp_experiment("adam_multiplier", hidden_sizes=(16,), learning_rate=0.001)
    return config
