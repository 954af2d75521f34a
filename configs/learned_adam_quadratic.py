"""Meta-train Adam with meta-learned log lr, beta logits and log eps with PES on rotated ill-
conditioned 10-d quadratics (condition 1..1e4).
"""

from meta_train.config import quadratic_experiment


def get_config():
    config = quadratic_experiment("learned_adam", learning_rate=0.001)
    config.meta_train.meta_learning_rate = 0.03
    return config
