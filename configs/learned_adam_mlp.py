"""Meta-train Adam with meta-learned log lr, beta logits and log eps with PES on MLPs on scikit-
learn's bundled 8x8 digits (no data files).
"""

from meta_train.config import digits_mlp_experiment


def get_config():
    config = digits_mlp_experiment("learned_adam", learning_rate=0.001)
    config.meta_train.meta_learning_rate = 0.03
    return config
