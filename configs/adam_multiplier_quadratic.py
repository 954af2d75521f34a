"""Meta-train Adam with per-tensor lr/beta multipliers predicted from tensor statistics and time
with PES on rotated ill-conditioned 10-d quadratics (condition 1..1e4).
"""

from meta_train.config import quadratic_experiment


def get_config():
    config = quadratic_experiment("adam_multiplier", hidden_sizes=(16,), learning_rate=0.001)
    return config
